"""The one path layer: every artifact path is a local path or a `scheme://` URL (gs://, and any
other scheme etils.epath serves: s3://, az://, hf://).

Local paths go through os and open exactly as before (no behaviour change, no slowdown; atomic
writes keep scone_jax/files.py's temp file + rename). A `scheme://` path goes through
etils.epath, whose backend for gs:// here is always fsspec/gcsfs (EPATH_USE_TF=false: epath
would otherwise pick TensorFlow's gfile whenever TensorFlow is installed, and ask Google's
storage-control API whether each bucket is zonal). A scheme:// path never touches the local file
system: `makedirs` creates nothing (an object store has no directories), and nothing is ever
written under ./gs:/...

An object write on a bucket is atomic (a reader sees the old object or the new one), so
`atomic_write_*` is a plain write there. A bucket has no append: a file that grows (metrics) is
rewritten whole (train/metrics.py).

Emulator: with STORAGE_EMULATOR_HOST set (the variable Google's client libraries and gcsfs read)
every client talks to it with anonymous or test credentials and never to a metadata server or a
token endpoint: gcsfs with token='anon' (its endpoint comes from the variable) and without its
gRPC bucket-type lookup; tensorstore (orbax's array I/O) through TENSORSTORE_GCS_HTTP_URL and
GOOGLE_AUTH_TOKEN_FOR_TESTING (set from the emulator's address unless given);
google-cloud-storage (orbax's bucket checks) uses anonymous credentials by itself.
`configure()` applies this; every remote operation here calls it first.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from typing import IO

from scone_jax.errors import UserError

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_configured: tuple | None = None


def is_remote(path) -> bool:
  """True for a `scheme://` URL (gs://bucket/x), False for a local path."""
  return "://" in str(path)


def scheme(path) -> str | None:
  return str(path).split("://", 1)[0] if is_remote(path) else None


def join(base, *parts: str) -> str:
  """os.path.join for a local path; '/'-joined for a URL."""
  base = str(base)
  if not is_remote(base):
    return os.path.join(base, *parts)
  out = base
  for p in parts:
    out = out.rstrip("/") + "/" + str(p).lstrip("/") if p else out
  return out


def absolute(path) -> str:
  """os.path.abspath for a local path; a URL as it is."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def basename(path) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


# ---- remote clients -----------------------------------------------------------------------------


def emulator_url() -> str | None:
  """The storage emulator's base URL (http://HOST:PORT) when STORAGE_EMULATOR_HOST is set."""
  host = os.environ.get(EMULATOR_ENV, "")
  if host in ("", "default"):
    return None
  return host if host.startswith(("http://", "https://")) else f"http://{host}"


def configure() -> None:
  """Points every client at the emulator when STORAGE_EMULATOR_HOST is set (module docstring) and
  makes etils.epath serve gs:// through fsspec/gcsfs. Cheap and idempotent: re-applied only when
  the emulator variable changes."""
  global _configured
  emulator = emulator_url()
  key = (emulator, os.environ.get("EPATH_USE_TF"))
  if _configured == key:
    return
  if emulator is not None:
    os.environ["EPATH_USE_TF"] = "false"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  else:
    os.environ.setdefault("EPATH_USE_TF", "false")
  from etils.epath import gpath
  gpath._is_tf_installed.cache_clear()   # noqa: SLF001 - it caches EPATH_USE_TF's first reading
  if emulator is not None:
    with contextlib.suppress(ImportError):
      import fsspec
      import gcsfs.core
      for proto in ("gs", "gcs"):
        fsspec.config.conf.setdefault(proto, {})["token"] = "anon"
        # the plain client: the extended one asks a gRPC storage-control API (absent on an emulator)
        fsspec.register_implementation(proto, gcsfs.core.GCSFileSystem, clobber=True)
  _configured = (emulator, os.environ.get("EPATH_USE_TF"))


def _require_backend(path: str) -> None:
  if scheme(path) in ("gs", "gcs"):
    try:
      import gcsfs  # noqa: F401
    except ImportError:
      raise UserError(f"{path!r}: gs:// paths need gcsfs, which is not installed: "
                      "pip install 'scone_jax[gcs]'") from None


def epath(path):
  """The etils.epath.Path of a URL, with the clients configured (a remote path only)."""
  path = str(path)
  _require_backend(path)
  configure()
  from etils import epath as ep
  return ep.Path(path)


def filesystem(path):
  """The fsspec file system serving a URL (gcsfs for gs://), configured as `configure` says."""
  path = str(path)
  _require_backend(path)
  configure()
  import fsspec
  return fsspec.filesystem(scheme(path))


def check_bucket(path: str, flag: str = "--workdir") -> None:
  """A one-line UserError unless the bucket of a gs:// `path` exists and can be read; nothing for
  a local path or another scheme."""
  if scheme(path) not in ("gs", "gcs"):
    return
  bucket = str(path).split("://", 1)[1].split("/", 1)[0]
  fs = filesystem(path)
  try:
    found = fs.exists(bucket)
  except Exception as e:   # noqa: BLE001 - credentials, permissions, network: one line
    raise UserError(f"{flag} {path!r}: cannot reach bucket gs://{bucket} ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]})") from None
  if not found:
    raise UserError(f"{flag} {path!r}: bucket gs://{bucket} does not exist (or is not visible with these "
                    "credentials); create it or pick another --workdir")


# ---- queries ------------------------------------------------------------------------------------


def exists(path) -> bool:
  return epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  """A directory; on a bucket: a prefix holding at least one object."""
  return epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
  return epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
  """The names in a directory (sorted); [] when it does not exist."""
  if not is_remote(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  p = epath(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def list_dirs(path) -> list[str]:
  """The names of the directories in `path`, sorted ([] when it does not exist)."""
  return [n for n in listdir(path) if isdir(join(path, n))]


def glob(path, pattern: str) -> list[str]:
  """The paths in directory `path` whose name matches `pattern` (fnmatch), sorted."""
  return [join(path, n) for n in listdir(path) if fnmatch.fnmatch(n, pattern)]


# ---- reading and writing ------------------------------------------------------------------------


def open_file(path, mode: str = "r") -> IO:
  """open() for a local path; the epath file for a URL (modes r, w, rb, wb; no append)."""
  if not is_remote(path):
    return open(path, mode)
  if "a" in mode or "+" in mode:
    raise ValueError(f"{path!r}: a remote object cannot be opened with mode {mode!r} (no append)")
  return epath(path).open(mode)


def read_bytes(path) -> bytes:
  if is_remote(path):
    return epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  if is_remote(path):
    return epath(path).read_text()
  with open(path) as f:
    return f.read()


def atomic_write_bytes(path, data: bytes) -> None:
  """Replaces `path` atomically: a temp file + rename locally (scone_jax/files.py), one object
  write on a bucket (atomic there)."""
  if is_remote(path):
    epath(path).write_bytes(data)
    return
  from scone_jax.files import atomic_write_bytes as local_write
  local_write(str(path), data)


def atomic_write_text(path, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def append_text(path, text: str) -> None:
  """Appends `text` to a file: locally in place; on a bucket the object is rewritten whole."""
  if not is_remote(path):
    with open(path, "a") as f:
      f.write(text)
    return
  old = read_text(path) if exists(path) else ""
  atomic_write_text(path, old + text)


def makedirs(path) -> None:
  """os.makedirs(exist_ok=True) for a local path; nothing for a URL (a bucket has no directories,
  and a scheme:// path never creates a local one)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def remove(path, *, missing_ok: bool = True) -> None:
  if is_remote(path):
    p = epath(path)
    if missing_ok and not p.exists():
      return
    p.unlink()
    return
  try:
    os.remove(path)
  except FileNotFoundError:
    if not missing_ok:
      raise


def rmtree(path) -> None:
  """Removes a directory tree (every object under a prefix); nothing when it does not exist."""
  if is_remote(path):
    p = epath(path)
    if p.exists():
      p.rmtree()
    return
  shutil.rmtree(path, ignore_errors=True)


def upload(local: str, remote: str) -> None:
  """Copies a local file to a path (local or remote), replacing it."""
  with open(local, "rb") as f:
    atomic_write_bytes(remote, f.read())

