"""Face landmarks, face-region masks in the model-input frame, occlusion, and relevance per region."""

from psyattr.faces.framing import (
    DEFAULT_FRAMING,
    FRAMINGS,
    FROM_MODEL,
    FramedFace,
    Framing,
    FramingError,
    frame_file,
    frame_image,
    get_framing,
    resolve_framing,
)
from psyattr.faces.detector import DetectorError, FaceBox, FaceMeshDetector, MeshResult, default_detector
from psyattr.faces.figures import draw_regions
from psyattr.faces.landmarks import (
    MESH,
    STASM,
    LandmarkError,
    Landmarks,
    load_omi_mesh,
    read_stasm_landmarks,
    to_model_input,
)
from psyattr.faces.occlusion import occlude, skin_colour, soft_alpha
from psyattr.faces.regions import REGION_NAMES, FaceRegions, build_regions, polygon_mask
from psyattr.faces.relevance import region_shares, relevance_spread
from psyattr.faces.sources import (
    detect_landmarks,
    frame_item,
    frame_rated_images,
    framed_regions,
    item_landmarks,
    load_original_rgb,
    regions_for_file,
    regions_for_image,
    regions_for_item,
)

__all__ = [
    "DEFAULT_FRAMING", "FRAMINGS", "FROM_MODEL", "FramedFace", "Framing", "FramingError", "frame_file", "frame_image",
    "frame_item", "frame_rated_images", "framed_regions", "get_framing", "item_landmarks", "resolve_framing",
    "MESH", "REGION_NAMES", "STASM", "DetectorError", "FaceBox", "FaceMeshDetector", "FaceRegions", "LandmarkError",
    "Landmarks", "MeshResult", "build_regions", "default_detector", "detect_landmarks", "draw_regions",
    "load_omi_mesh", "load_original_rgb", "occlude", "polygon_mask", "read_stasm_landmarks", "region_shares",
    "regions_for_file", "regions_for_image", "regions_for_item", "relevance_spread", "skin_colour", "soft_alpha",
    "to_model_input",
]
