"""Face embedders behind one interface: dlib's pretrained ResNet descriptor (default) or a network trained
by this pipeline (`--model models/<run>/model.pt`, through the same embedding code as `evaluate`).

Both score a pair as "higher = more alike": dlib as 1 - Euclidean distance of the 128-d descriptors
(dlib's own rule is distance < 0.6 = same person), a trained model as the cosine similarity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.footage.detection import Face, face_chip, model_file, RESNET
from stages.footage.settings import FACE_THRESHOLD, MODEL_FACE_THRESHOLD
from stages.media.face_crop import FILL, crop_rgb


def crop_geometry(meta: dict, path: str | Path) -> tuple[int, float]:
    """The crop size and margin a checkpoint's face stream was trained on; other fills are refused."""
    from stages.core.errors import DataError
    missing = [key for key in ("crop_size", "crop_margin", "crop_fill") if key not in meta]
    if missing:
        raise DataError(path, "the checkpoint records no crop geometry (written by an older `apes-cli train`): "
                              "train the run again", field=missing[0])
    if meta["crop_fill"] != FILL:
        raise DataError(path, f"crops filled {meta['crop_fill']!r} outside the frame; search fills {FILL!r}",
                        field="crop_fill")
    return int(meta["crop_size"]), float(meta["crop_margin"])


class DlibFaceEmbedder:
    """dlib_face_recognition_resnet_model_v1 on 150 px chips aligned by the 5-point landmarks (its network run
    in numpy: stages/footage/dlib_resnet.py)."""

    name = "dlib-resnet-v1"
    dim = 128
    threshold = FACE_THRESHOLD

    def __init__(self) -> None:
        from stages.footage.dlib_resnet import dlib_resnet
        self._net = dlib_resnet(str(model_file(RESNET)))

    def patch(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """What `embed` takes for this face: the aligned 150 px chip."""
        return face_chip(rgb, face)

    def embed(self, patches: list[np.ndarray]) -> np.ndarray:
        """(n, 128) float32 descriptors."""
        if not patches:
            return np.zeros((0, self.dim), np.float32)
        return self._net(np.stack(patches)).astype(np.float32)

    @staticmethod
    def scores(query: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """1 - Euclidean distance of the query to each row."""
        return 1.0 - np.linalg.norm(np.asarray(embeddings, np.float32) - query[None, :], axis=1)

    @staticmethod
    def pool(embeddings: np.ndarray) -> np.ndarray:
        """A track's descriptor: the mean of its chips' descriptors."""
        return embeddings.mean(axis=0)


class TrainedFaceEmbedder:
    """The face stream of an apes checkpoint on square crops of its training size; cosine scores."""

    threshold = MODEL_FACE_THRESHOLD

    def __init__(self, path: str | Path) -> None:
        import torch

        from stages.core.errors import DataError
        from stages.learning.models import EMBEDDING_DIM, load_checkpoint
        model = load_checkpoint(path)
        if model.face is None:
            raise DataError(path, f"a {model.modality} model has no face stream; expected a face or crossmodal run")
        self._model, self._torch = model, torch
        self.size, self.margin = crop_geometry(model.meta, path)
        self.name = f"apes-model-{Path(path).parent.name}"
        self.dim = EMBEDDING_DIM

    def patch(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The face box cut as the crop stage cut the training crops (size, margin, black fill)."""
        return crop_rgb(rgb, face.box, self.size, self.margin)

    def embed(self, patches: list[np.ndarray]) -> np.ndarray:
        """(n, 512) L2-normalised float32 embeddings."""
        from stages.learning.datasets import crops_to_tensor
        if not patches:
            return np.zeros((0, self.dim), np.float32)
        with self._torch.inference_mode():
            features = self._model.face(crops_to_tensor(np.stack(patches))).float()
            features = self._torch.nn.functional.normalize(features, dim=1)
        return features.numpy().astype(np.float32)

    @staticmethod
    def scores(query: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity."""
        return np.asarray(embeddings, np.float32) @ (query / max(float(np.linalg.norm(query)), 1e-9))

    @staticmethod
    def pool(embeddings: np.ndarray) -> np.ndarray:
        """Mean, renormalised."""
        mean = embeddings.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-9)


def face_embedder(model: str = "") -> DlibFaceEmbedder | TrainedFaceEmbedder:
    """The default dlib embedder, or the trained network at `model`."""
    return TrainedFaceEmbedder(model) if model else DlibFaceEmbedder()
