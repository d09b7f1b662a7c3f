"""An exported SDNet folder served by onnxruntime: segmentation, decomposition, decoding.

The folder holds four ONNX models and ``sdnet-export.json``, a sidecar that lists each file's
SHA-256, its inputs and outputs, the preprocessing parameters, the label map and the label
convention of the files written (``label_convention``: "acdc", or "mnms" for a model trained on
M&Ms data). Every file's
hash is checked before any of them is loaded; a mismatch is refused.
"""

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sdnet_infer.geometry import TRAINING_ORIENTATION, check_orientation
from sdnet_infer.labels import LABEL_CONVENTIONS

SIDECAR = "sdnet-export.json"
FORMAT = "sdnet-onnx"
MODELS = ("segment", "anatomy", "modality", "decoder")
# the numeric precisions of a segmentation model this runtime can run; exports older than the
# precision option carry no entry and are float32
PRECISIONS = ("fp32", "fp16", "int8")
# anatomy factors segment() keeps for decompose(): about 50 kB each at 224 x 224 x 8, 50 MB in all
ANATOMY_CACHE_SLICES = 1024


class ExportError(RuntimeError):
    """An export folder that cannot be used (missing files, a hash mismatch, a bad sidecar)."""


def sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(folder):
    folder = Path(folder)
    path = folder / SIDECAR
    if not path.is_file():
        raise ExportError(f"{folder}: no {SIDECAR}; not an sdnet-tf export folder (make one with sdnet-tf export)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path}: not valid JSON ({error})") from error
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    precision = meta.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ExportError(f"{path}: precision {precision!r} is not one this runtime runs ({', '.join(PRECISIONS)}); "
                          "update sdnet-infer or export again with sdnet-tf export --precision")
    return meta


def verify(folder, meta=None):
    """Check every model file, and its external weights file if it has one, against the
    sidecar's SHA-256; raise ``ExportError`` on a missing file or a mismatch."""
    folder = Path(folder)
    meta = meta or read_sidecar(folder)
    for name, entry in meta["models"].items():
        for item in (entry, entry.get("data")):
            if not item:
                continue
            path = folder / item["file"]
            if not path.is_file():
                raise ExportError(f"{path}: missing (listed for '{name}' in {SIDECAR})")
            actual = sha256(path)
            if actual != item["sha256"]:
                raise ExportError(f"{path}: SHA-256 {actual} does not match {item['sha256']} in {SIDECAR}; "
                                  "the file was modified or corrupted; refusing to load it")
    return meta


def choose_providers(requested=None):
    """CUDA when onnxruntime-gpu offers it (or as ``requested``), else the CPU provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ExportError(f"execution provider(s) {missing} not available; this onnxruntime has {available}")
        return list(requested)
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class AnatomyCache:
    """Binary anatomy factors computed on the way to the masks, kept for a later decomposition of
    the same slices (the quality control), so that the U-Net does not run twice.

    Each factor is bit-packed (about 50 kB at 224 x 224 x 8) and keyed by a digest of its input
    slice; ``take`` hands each out once; at most ``limit`` are kept, the oldest dropped first.
    Only exactly binary maps are kept, so what ``take`` returns equals what was computed.
    """

    def __init__(self, limit=ANATOMY_CACHE_SLICES):
        self.limit = limit
        self._kept = OrderedDict()

    def __len__(self):
        return len(self._kept)

    @staticmethod
    def _digest(image):
        return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()

    def keep(self, images, anatomy):
        """Keep ``anatomy`` (N, H, W, C) of ``images`` (N, ...); a map that is not binary is not kept."""
        anatomy = np.asarray(anatomy)
        if not np.all((anatomy == 0) | (anatomy == 1)):
            return
        for image, a in zip(images, anatomy):
            self._kept[self._digest(image)] = (a.shape, np.packbits(a.astype(bool)))
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def take(self, images, compute):
        """The anatomy (N, H, W, C) float32 of ``images``: kept factors where there are, and
        ``compute(images[missing])`` for the rest."""
        found = [self._kept.pop(self._digest(image), None) for image in images]
        missing = [i for i, item in enumerate(found) if item is None]
        computed = np.asarray(compute(images[missing]), np.float32) if missing else None
        parts = []
        for i, item in enumerate(found):
            if item is None:
                parts.append(computed[missing.index(i)])
            else:
                shape, bits = item
                parts.append(np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(np.float32))
        return np.stack(parts)


class SDNetRuntime:
    """Run an exported SDNet with onnxruntime.

    Args:
        folder: an export folder written by ``sdnet-tf export``.
        providers: onnxruntime execution providers; default CUDA if available, else CPU.
        threads: intra-op threads (0: onnxruntime's default, one per physical core).
        batch_size: slices per inference call; default 16 on CUDA, 1 on the CPU (on 2 cores
            batch 1 is as fast per slice as batch 16 and keeps the peak memory of a 224 x 224
            model under 500 MB instead of over 1 GB; benchmarks/RESULTS.md).
        meta: the sidecar as a dict instead of the folder's ``sdnet-export.json`` (the export
            uses it before it writes the sidecar); the files are checked against it all the same.
    """

    def __init__(self, folder, providers=None, threads=0, batch_size=None, meta=None):
        self.folder = Path(folder)
        self.meta = verify(self.folder, meta)
        self.providers = choose_providers(providers)
        self.threads = threads
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size or (16 if self.providers[0] == "CUDAExecutionProvider" else 1)
        self._sessions = {}
        # binary anatomy factors that segment.onnx computed on the way to the masks, bit-packed and
        # keyed by a digest of their slice, so that decompose() of the same slices (the quality
        # control) does not run the U-Net again; bounded, oldest dropped first
        self._anatomy = AnatomyCache()
        pre = self.meta["preprocessing"]
        self.size = int(pre["size"])
        self.spacing = float(pre["spacing_mm"])
        # exports older than the geometry reader carry no orientation: they were all trained on ACDC's
        self.orientation = check_orientation(pre.get("orientation", TRAINING_ORIENTATION), str(self.folder / SIDECAR))
        self.layout = self.meta.get("layout", "NHWC")
        self.precision = self.meta.get("precision", "fp32")  # of segment.onnx; the others are float32
        # the label values written (sdnet_infer.labels.LABEL_CONVENTIONS): "mnms" for a model trained on
        # M&Ms data; exports older than the entry were all written in ACDC's
        convention = self.meta.get("label_convention", "acdc")
        if convention not in LABEL_CONVENTIONS:
            raise ExportError(f"{self.folder / SIDECAR}: label_convention {convention!r} is not one this runtime "
                              f"writes ({', '.join(sorted(LABEL_CONVENTIONS))}); a newer sdnet-infer may read it")
        self.label_convention = convention

    @property
    def provider(self):
        """The execution provider that runs the models (the first one onnxruntime accepted)."""
        return self._session("segment").get_providers()[0]

    def _session(self, name):
        if name not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads
            # onnxruntime's memory pattern pre-plans one block for all activations; on the float
            # models it costs about 40 MB of peak memory at 224 x 224 and saves no time, on the
            # int8 one it saves about 10 MB (benchmarks/RESULTS.md)
            options.enable_mem_pattern = name == "segment" and self.precision == "int8"
            path = self.folder / self.meta["models"][name]["file"]
            self._sessions[name] = ort.InferenceSession(str(path), options, providers=self.providers)
        return self._sessions[name]

    def _to_layout(self, images):
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[..., None]
        return np.ascontiguousarray(np.moveaxis(images, -1, 1)) if self.layout == "NCHW" else images

    def _run(self, name, feeds, batched_input):
        session = self._session(name)
        outputs = [o.name for o in session.get_outputs()]
        n = len(feeds[batched_input])
        parts = []
        for start in range(0, n, self.batch_size):
            chunk = {k: v[start:start + self.batch_size] for k, v in feeds.items()}
            parts.append(session.run(outputs, chunk))
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(outputs)}

    def segment(self, images):
        """Preprocessed slices (N, size, size[, 1]) -> foreground probabilities (N, size, size, 3)."""
        images = self._to_layout(images)
        outputs = self._run("segment", {"image": images}, "image")
        if "anatomy" in outputs:  # exports since quality control: keep it for decompose()
            self._anatomy.keep(images, outputs["anatomy"])
        return outputs["probabilities"]

    def _anatomy_of(self, images):
        """Binary anatomy (N, size, size, C) of layout-converted slices: the ones segment() already
        computed, exactly; the U-Net (anatomy.onnx) for the others."""
        return self._anatomy.take(images, lambda missing: self._run("anatomy", {"image": missing}, "image")["anatomy"])

    def decompose(self, images):
        """Slices -> (binary anatomy (N, size, size, C), z mean (N, nz), z log-variance (N, nz) or None).

        The anatomy of slices that ``segment`` has just seen comes from that pass (the same
        U-Net and binarisation, so the same values); the others go through ``anatomy.onnx``.
        """
        images = self._to_layout(images)
        anatomy = self._anatomy_of(images)
        # a model whose z depends on the image alone (the MICCAI 2018 precursor) takes no anatomy
        # and has no log-variance (its z is deterministic): None then
        wanted = {i.name for i in self._session("modality").get_inputs()}
        feeds = {k: v for k, v in {"anatomy": anatomy, "image": images}.items() if k in wanted}
        moments = self._run("modality", feeds, "image")
        return anatomy, moments["mean"], moments.get("logvar")

    def decode(self, anatomy, z):
        """(anatomy (N, size, size, C), z (N, nz)) -> images (N, size, size, 1)."""
        feeds = {"anatomy": np.asarray(anatomy, np.float32), "z": np.asarray(z, np.float32)}
        return self._run("decoder", feeds, "z")["image"]

    def segment_volume(self, volume, spacing, source="volume"):
        """A (H, W, S) frame or (H, W, S, T) cine in the training orientation (``self.orientation``,
        as ``sdnet_infer.io.read_volume`` gives it), in-plane ``spacing`` (dy, dx) in mm -> uint8 ACDC
        labels of the same shape."""
        from sdnet_infer.predict import predict_volume

        return predict_volume(volume, spacing, self.segment, size=self.size, target=self.spacing, source=source)
