"""FSDD and MNIST fetched with TFDS's download manager, without TensorFlow.

TFDS's own builders cannot run here: ``spoken_digit`` declares a ``tfds.features.Audio``,
whose decoder imports TensorFlow when it is built (tensorflow/datasets#11233), and ``mnist``
reads its idx files with ``tf.io.gfile`` when it generates its records (TFDS's extractor uses
``tf.io.gfile`` as well). So we take what TFDS knows, the addresses and the registered
checksums, and let ``tfds.download.DownloadManager`` fetch, verify and cache the files as it
does for its builders: in ``<data_dir>/downloads/<dataset>/``, a file named after its address
and checksum with an ``.INFO`` record beside it; a file put by hand into
``<data_dir>/downloads/manual/`` under its published name is used (and checked) instead.
We then read the files ourselves: the FSDD archive with ``tarfile``/``zipfile`` into
``<data_dir>/downloads/extracted/`` (as TFDS names it), the MNIST idx files with numpy.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import urllib.parse
import uuid
import zipfile

from data_prep import common

MNIST_FILES = {"test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
               "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")}


def _tfds():
  try:
    import tensorflow_datasets as tfds  # the [tfds] extra, only on this path
  except ImportError as e:
    raise common.PrepError(f"--source=tfds needs tensorflow_datasets ({e}): pip install "
                           "'inforeg-jax[tfds]'") from None
  from absl import logging as absl_logging  # tfds logs through absl

  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("urllib3").setLevel(logging.ERROR)  # a warning per retry, after our error
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()  # its bars are carriage returns in a log file
  return tfds


def default_data_dir() -> str:
  """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def fsdd_address() -> tuple[str, object]:
  """The archive TFDS's ``spoken_digit`` downloads and its registered ``UrlInfo``."""
  tfds = _tfds()
  from tensorflow_datasets.datasets.spoken_digit import spoken_digit_dataset_builder as builder

  spec = importlib.util.find_spec("tensorflow_datasets.datasets.spoken_digit")
  tsv = os.path.join(list(spec.submodule_search_locations)[0], "checksums.tsv")
  infos = tfds.download.checksums.load_url_infos(tsv)
  return builder._DOWNLOAD_URL, infos[builder._DOWNLOAD_URL]


def mnist_addresses() -> dict[str, str]:
  """{file name: address} of the four idx files TFDS's ``mnist`` downloads."""
  _tfds()
  from tensorflow_datasets.image_classification import mnist

  return {name: mnist._MNIST_URL + name for pair in MNIST_FILES.values() for name in pair}


def _manager(data_dir: str, dataset: str, url_infos: dict | None = None):
  tfds = _tfds()
  downloads = os.path.join(data_dir, "downloads")
  try:
    return tfds.download.DownloadManager(
        download_dir=downloads, manual_dir=os.path.join(downloads, "manual"),
        dataset_name=dataset, url_infos=url_infos)
  except OSError as e:
    raise common.PrepError(f"--tfds_data_dir={data_dir}: cannot make {downloads} "
                           f"({e.strerror or e}); choose another --tfds_data_dir") from None


def _cached(data_dir: str, dataset: str, url: str, info) -> bool:
  """Whether the download manager will find ``url`` without the network: a finished download
  in its cache (named as ``DownloadManager._get_dl_path`` names it, with its ``.INFO``), or
  the file under its published name in downloads/manual/."""
  from tensorflow_datasets.core.download import resource

  downloads = os.path.join(data_dir, "downloads")
  for folder in (os.path.join(downloads, dataset), downloads):
    for name in (resource.get_dl_fname(url, info.checksum), resource.get_dl_fname(url)):
      path = os.path.join(folder, name)
      if os.path.exists(path) and os.path.exists(path + ".INFO"):
        return True
  return bool(info.filename) and os.path.exists(os.path.join(downloads, "manual", info.filename))


def _download(manager, urls: dict[str, str], data_dir: str, dataset: str,
              infos: dict) -> dict[str, str]:
  """``manager.download(urls)``; offline, one line at once instead of TFDS's minutes of retries."""
  missing = [u for u in urls.values() if not _cached(data_dir, dataset, u, infos[u])]
  manual = os.path.join(data_dir, "downloads", "manual")
  if missing:
    host = urllib.parse.urlparse(missing[0]).hostname
    try:
      socket.getaddrinfo(host, 443)
    except OSError as e:
      names = ", ".join(sorted(infos[u].filename or os.path.basename(u) for u in missing))
      raise common.PrepError(f"cannot reach {host} ({e.strerror or e}) to fetch {names}: connect "
                             f"to the network, or download them by hand into {manual}") from None
    size = sum(int(infos[u].size) for u in missing) / 2**20
    print(f"fetching {len(missing)} file(s), {size:.1f} MiB, from {host} into "
          f"{os.path.join(data_dir, 'downloads')} (TFDS's download manager)", flush=True)
  try:
    paths = manager.download(urls)
  except KeyboardInterrupt:
    raise
  except Exception as e:  # no network, a wrong checksum, a full disk, ...
    why = (str(e).strip().splitlines() or [type(e).__name__])[0]
    names = ", ".join(sorted(os.path.basename(u) for u in urls.values()))
    found = re.search(r"Artifact (\S+), downloaded to (\S+), has wrong checksum", why)
    if found:
      raise common.PrepError(
          f"{found.group(2)} does not match TFDS's registered size and checksum of "
          f"{found.group(1)}; delete it (and any .INFO file beside it) and run again") from None
    raise common.PrepError(
        f"could not fetch {names} into {os.path.join(data_dir, 'downloads')} "
        f"({type(e).__name__}: {why}); check the network, or put the file(s) into "
        f"{os.path.join(data_dir, 'downloads', 'manual')}") from None
  return {k: os.fspath(p) for k, p in paths.items()}


def fetch_mnist(data_dir: str) -> dict[str, tuple[str, str]]:
  """{'train'|'test': (images, labels)} paths of MNIST's idx files, fetched (or found in the
  cache) and checked against TFDS's registered checksums."""
  tfds = _tfds()
  addresses = mnist_addresses()
  registry = tfds.download.checksums.get_all_url_infos()
  infos = {u: registry[u] for u in addresses.values()}
  paths = _download(_manager(data_dir, "mnist"), addresses, data_dir, "mnist", infos)
  return {split: (paths[images], paths[labels]) for split, (images, labels) in
          MNIST_FILES.items()}


def _extract(archive: str, extract_dir: str) -> str:
  """``archive`` unpacked once into ``extract_dir`` (atomically: a temporary folder renamed)."""
  from tensorflow_datasets.core.download import resource

  method = resource.guess_extract_method(os.path.basename(archive)).name
  dest = os.path.join(extract_dir, f"{method}.{os.path.basename(archive)}")
  if os.path.isdir(dest):
    return dest
  tmp = f"{dest}.incomplete.{uuid.uuid4().hex}"
  try:
    if tarfile.is_tarfile(archive):
      with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    elif zipfile.is_zipfile(archive):
      with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    else:
      raise common.PrepError(f"{archive} is neither a tar nor a zip archive; delete it and its "
                             ".INFO file and run again")
    try:
      os.replace(tmp, dest)
    except OSError:  # another preparation extracted it first
      if not os.path.isdir(dest):
        raise
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
    raise common.PrepError(f"{archive} cannot be extracted ({type(e).__name__}: {e}); delete "
                           "it and its .INFO file and run again") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dest


def fetch_fsdd(data_dir: str) -> str:
  """The ``recordings`` folder of FSDD's archive as TFDS's ``spoken_digit`` fetches it."""
  url, info = fsdd_address()
  manager = _manager(data_dir, "spoken_digit", {url: info})
  archive = _download(manager, {"fsdd": url}, data_dir, "spoken_digit", {url: info})["fsdd"]
  root = _extract(archive, os.path.join(data_dir, "downloads", "extracted"))
  found = sorted(glob.glob(os.path.join(root, "recordings")) +
                 glob.glob(os.path.join(root, "*", "recordings")))
  if not found:
    raise common.PrepError(f"{archive} holds no recordings/ folder (FSDD's layout); delete it "
                           "and its .INFO file and run again")
  return found[0]
