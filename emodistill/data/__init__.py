"""Data: Aff-wild2-style readers, caches, audio features and clip sampling, all producing or
consuming a `Split` (dataset.py).

Import the modules themselves (`emodistill.data.affwild.load_split`, `emodistill.data.sampler`):
this package imports nothing, so reading a `Split` never pulls in OpenCV, PyAV or librosa.
"""
