"""The facts every module agrees on: EuroSAT's classes and their colours, its bands and
patch size, and the label values the outputs reserve. The bottom of the package:
imports nothing. image_functions.py names the talk's facts (CLASS_NAMES, the bands) from
here, scene/blocks.py the reserved values.
"""

from __future__ import annotations

# EuroSAT class folder names; the class index is the position in this tuple.
CLASS_NAMES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
# Colours (R, G, B) of the EuroSAT classes in label rasters and quicklooks.
CLASS_COLOURS = {
    "AnnualCrop": (230, 200, 90),
    "Forest": (30, 110, 40),
    "HerbaceousVegetation": (150, 200, 90),
    "Highway": (120, 120, 120),
    "Industrial": (200, 60, 60),
    "Pasture": (180, 230, 120),
    "PermanentCrop": (200, 140, 60),
    "Residential": (240, 120, 160),
    "River": (70, 140, 230),
    "SeaLake": (20, 50, 150),
}
# Band order of the EuroSAT MS GeoTIFFs (B8A last, as stored in the files).
MS_BAND_NAMES = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip
# Channels of the EuroSAT RGB JPEGs, as Sentinel-2 bands.
RGB_BAND_NAMES = ("B04", "B03", "B02")
# Side in pixels of a EuroSAT patch, the window every network here takes.
IMAGE_SIZE = 64

# Label value of pixels that were not classified (nodata in the scene).
LABEL_NODATA = 255
# Probability value of pixels that were not classified.
PROBABILITY_NODATA = float("nan")
# Label value of cloudy pixels in label rasters (class indices below it, nodata LABEL_NODATA).
CLOUD_LABEL = 254
CLOUD_NAME = "Cloud"
CLOUD_COLOUR = (255, 255, 255)
