"""Readers of weight files written by other libraries (one small module per foreign format), used to start a model
from separately pretrained towers (``cnclip_scale.model.towers``)."""
