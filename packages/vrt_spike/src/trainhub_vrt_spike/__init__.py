"""trainhub-vrt-spike: spike-guided video deblurring with a VRT-style transformer (recipe ``vrt_spike``)."""

__version__ = "0.1.0"
