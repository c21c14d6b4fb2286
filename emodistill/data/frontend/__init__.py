"""The front end, in one place: videos decoded upright (`decode`), faces found (one file per
detector, named in `detectors`), followed (`track`) or given (`given`), and aligned (`align`).

`prepare`, `predict` and the Aff-wild2 reader all use it; `pipeline.FrontEnd` is the whole of it.
"""

from emodistill.data.frontend.decode import VIDEO_SUFFIXES, VideoFrame, VideoInfo, iter_frames, prefetch, probe_video
from emodistill.data.frontend.detectors import DEFAULT_DETECTOR, DETECTORS, make_detector
from emodistill.data.frontend.face import LANDMARK_COLUMNS, LANDMARKS, Box, Face
from emodistill.data.frontend.images import is_image_file, read_image, write_jpeg
from emodistill.data.frontend.pipeline import FaceCrop, FrontEnd
from emodistill.data.frontend.track import DETECT_EVERY, FaceTracker

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "DETECT_EVERY",
    "LANDMARKS",
    "LANDMARK_COLUMNS",
    "VIDEO_SUFFIXES",
    "Box",
    "Face",
    "FaceCrop",
    "FaceTracker",
    "FrontEnd",
    "VideoFrame",
    "VideoInfo",
    "is_image_file",
    "iter_frames",
    "make_detector",
    "prefetch",
    "probe_video",
    "read_image",
    "write_jpeg",
]
