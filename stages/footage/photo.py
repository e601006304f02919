"""The face query: read a photo, find its faces, pick one (the largest, or --face-index), embed it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import DataError
from stages.footage.detection import detect_faces
from stages.media.face_crop import crop_rgb

MAX_SIDE = 1600


@dataclass
class FaceQuery:
    """The chosen face of a query photo."""

    embedding: np.ndarray
    faces_found: int
    face_index: int        # 1-based, faces numbered left to right
    box: list[float]       # x1, y1, x2, y2 in pixels of the photo
    thumbnail: bytes       # JPEG
    note: str              # what to tell the user when the choice was not obvious


def read_photo(path: str | Path) -> np.ndarray:
    """An RGB uint8 image, shrunk to at most MAX_SIDE pixels; DataError if it is not an image."""
    import cv2
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "face photo not found")
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(path, "not a readable image; expected a photo (JPEG, PNG, ...) showing the person's face")
    scale = MAX_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def query_face(path: str | Path, embedder, face_index: int | None = None) -> FaceQuery:
    """Detect the faces of the photo (upsampling small photos), choose one, embed it."""
    import cv2
    image = read_photo(path)
    faces = detect_faces(image, upsample=1)
    if not faces and max(image.shape[:2]) < 800:
        faces = detect_faces(image, upsample=2)
    if not faces:
        raise DataError(path, "no face found in the photo; expected a photo with one clear, roughly frontal face")
    faces.sort(key=lambda f: float(f.box[0]))
    if face_index is not None:
        if not 1 <= face_index <= len(faces):
            raise DataError(path, f"--face-index {face_index} is out of range: the photo has {len(faces)} "
                                  f"face(s), numbered 1..{len(faces)} from left to right")
        chosen, note = face_index, ""
    else:
        areas = [float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])) for f in faces]
        chosen = int(np.argmax(areas)) + 1
        note = "" if len(faces) == 1 else (
            f"{path}: {len(faces)} faces found; using face {chosen} of {len(faces)} (numbered left to right, "
            f"the largest, at x={int(faces[chosen - 1].box[0])}..{int(faces[chosen - 1].box[2])} px); "
            "choose another with --face-index")
    face = faces[chosen - 1]
    embedding = embedder.embed([embedder.patch(image, face)])[0]
    thumb = crop_rgb(image, face.box, 128, 0.3)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    return FaceQuery(embedding, len(faces), chosen, [float(v) for v in face.box], jpeg.tobytes() if ok else b"", note)
