"""A Google Cloud Storage emulator on loopback for the gs:// tests, and a guard that no socket
leaves loopback.

`start_emulator()` runs gcp-storage-emulator (in memory) as a subprocess bound to 127.0.0.1 on
a free port, with a bucket made, and returns it; the subprocess watches its parent and its own
clock and exits by itself when the test process is gone or after `lifetime_s`, so a killed test
run never leaves it behind. `emulator_env(emulator)` is the environment every client reads:
STORAGE_EMULATOR_HOST (google-cloud-storage, gcsfs), TENSORSTORE_GCS_HTTP_URL and
GOOGLE_AUTH_TOKEN_FOR_TESTING (tensorstore: its endpoint and a fixed token, no credential
discovery). `loopback_only()` patches socket.socket.connect in this process to refuse any
address outside 127.0.0.0/8 and ::1 and records each refusal (a metadata server, a token
endpoint, storage.googleapis.com): a test asserts the record stays empty.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.request

# Runs in the emulator's own process: the server on a thread, and a watchdog that exits when
# the parent (the test process) is gone or the lifetime is over. Two gaps of gcp-storage-emulator
# are filled first, as GCS behaves: a download carries the object's generation
# (x-goog-generation: tensorstore's OCDBT manifest reads need it, "Malformed StorageGeneration"
# without it), and an upload with ifGenerationMatch=0 over an existing object is refused with 412
# (a create-only write: the run lease's and tensorstore's).
_SERVER = r"""
import os, sys, threading, time, logging
from http import HTTPStatus
logging.disable(logging.CRITICAL)
from gcp_storage_emulator.handlers import objects

_download, _insert = objects.download, objects.insert

def _generation(storage, request):
  try:
    return storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])["generation"]
  except Exception:
    return None

def download(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  generation = _generation(storage, request) if response.status == HTTPStatus.OK or \
      response.status == HTTPStatus.PARTIAL_CONTENT else None
  if generation is not None:
    response["x-goog-generation"] = str(generation)
    response["x-goog-metageneration"] = "1"

def insert(request, response, storage, *args, **kwargs):
  if request.query.get("ifGenerationMatch", [""])[0] == "0":
    kind = request.query.get("uploadType", [""])[0]
    if "name" in request.query:
      name = request.query["name"][0]
    elif kind == "multipart":
      name = request.data["meta"].get("name")
    else:
      name = (request.data or {}).get("name")
    try:
      storage.get_file_obj(request.params["bucket_name"], name)
      exists = True
    except Exception:
      exists = False
    if exists:
      response.status = HTTPStatus.PRECONDITION_FAILED
      response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold."}})
      return
  return _insert(request, response, storage, *args, **kwargs)

objects.download, objects.insert = download, insert
from gcp_storage_emulator.server import create_server   # its route table takes the handlers above
host, port, bucket, lifetime, parent = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
server = create_server(host, port, True, bucket)
def watchdog():
  deadline = time.monotonic() + lifetime
  while time.monotonic() < deadline and os.getppid() == parent:
    time.sleep(0.5)
  os._exit(0)
threading.Thread(target=watchdog, daemon=True).start()
server.run()
"""


@dataclasses.dataclass
class Emulator:
  host: str          # 127.0.0.1:PORT
  bucket: str
  process: subprocess.Popen

  @property
  def url(self) -> str:
    return f"http://{self.host}"

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait(timeout=30)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_emulator(bucket: str = "scone-test", lifetime_s: float = 900, timeout_s: float = 30) -> Emulator:
  """An in-memory GCS emulator on 127.0.0.1 holding an empty `bucket` (module docstring)."""
  port = _free_port()
  proc = subprocess.Popen([sys.executable, "-c", _SERVER, "127.0.0.1", str(port), bucket, str(lifetime_s),
                           str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  emulator = Emulator(f"127.0.0.1:{port}", bucket, proc)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with urllib.request.urlopen(f"{emulator.url}/storage/v1/b/{bucket}", timeout=2) as r:
        if r.status == 200:
          return emulator
    except OSError:
      pass
    if proc.poll() is not None or time.monotonic() > deadline:
      emulator.stop()
      raise RuntimeError(f"the GCS emulator did not start on {emulator.host}")
    time.sleep(0.1)


def emulator_env(emulator: Emulator) -> dict[str, str]:
  return {"STORAGE_EMULATOR_HOST": emulator.url, "TENSORSTORE_GCS_HTTP_URL": emulator.url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token", "GOOGLE_CLOUD_PROJECT": "test-project"}


def _is_loopback(address) -> bool:
  if not isinstance(address, tuple):   # AF_UNIX and the like never leave the machine
    return True
  host = address[0]
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.split("%")[0]).is_loopback
  except ValueError:
    return False   # a name: connect() would resolve it and leave loopback


@contextlib.contextmanager
def loopback_only():
  """Yields the list of refused connections: every connect() of this process to an address
  outside loopback raises ConnectionRefusedError and is recorded there."""
  refused: list = []
  original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

  def connect(self, address):
    if not _is_loopback(address):
      refused.append(address)
      raise ConnectionRefusedError(f"tests/gcs_emulator.py: connection outside loopback refused: {address}")
    return original_connect(self, address)

  def connect_ex(self, address):
    if not _is_loopback(address):
      refused.append(address)
      return 111   # ECONNREFUSED
    return original_connect_ex(self, address)

  socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
  try:
    yield refused
  finally:
    socket.socket.connect, socket.socket.connect_ex = original_connect, original_connect_ex
