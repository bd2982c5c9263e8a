"""Media URLs from requests -> something `open_video` reads, without letting a request read the
server's files or reach into its network.

* `file://` -- only when the server has a `--media-root`, and only regular files that are inside it
  after resolving `..` and symlinks (a symlink in the root that points outside is refused). Paths
  outside the root are refused before looking at the disk, so refusals say nothing about what
  exists elsewhere.
* `data:video/...;base64,` and `data:image/...;base64,` -- size-capped; a video goes to a private temp
  file (FFmpeg reads files), an image is decoded in memory.
* `http://`, `https://` -- only with `--allow-remote-media`. Every address the host resolves to must
  be public (no loopback, private, link-local, shared, reserved or multicast ranges, IPv4-mapped
  forms included); the connection goes to the very address that was checked, so a DNS answer that
  changes between check and connect cannot redirect it; redirects are followed by hand (at most
  `max_redirects`) and each hop is checked the same way; size and total time are capped.

Refusals are `MediaRefused` (HTTP 403), oversize payloads `MediaTooLarge` (413), slow downloads
`MediaTimeout` (504); anything else wrong with the input is a plain `InputError` (400).
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import os
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import unquote, urljoin, urlsplit

import httpcore
import numpy as np

from ..errors import ConfigError, InputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_IMAGE_PIXELS = 64_000_000
MAX_VIDEO_PIXELS = 4096 * 2304  # per frame: 4K (DCI and UHD) fits; a stream claiming 8000x8000 does not
VIDEO_SUFFIXES = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "video/matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/mpeg": ".mpg",
    "video/ogg": ".ogv",
    "image/gif": ".gif",
}
KNOWN_SUFFIXES = set(VIDEO_SUFFIXES.values()) | {".m4v", ".ts", ".flv", ".3gp", ".wmv"}


class MediaRefused(InputError):
    """The server's media rules forbid this URL."""

    status = 403


class MediaTooLarge(InputError):
    status = 413


class MediaTimeout(InputError):
    status = 504


NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (IPv4-mapped, 6to4, Teredo, NAT64): where it really goes."""
    found = [ip.ipv4_mapped] if ip.ipv4_mapped is not None else []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client): both must be public
    if any(ip in net for net in NAT64_PREFIXES):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def public_address(ip: IPAddress) -> bool:
    """True for addresses a server may fetch from on a user's behalf (the public internet only).
    IPv6 forms that tunnel to an IPv4 address are judged by that address (2002:7f00:1:: is 127.0.0.1)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner:
            return all(public_address(v4) for v4 in inner)
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified
    )


@dataclass
class MediaPolicy:
    """What the server's operator allows requests to point at."""

    root: Path | None = None  # file:// only below this folder; None: no file:// at all
    allow_remote: bool = False
    max_bytes: int = 32 << 20  # data: payloads and downloads
    fetch_timeout: float = 30.0  # seconds for a whole download, redirects included
    max_redirects: int = 3
    address_allowed: Callable[[IPAddress], bool] = public_address

    def __post_init__(self):
        self.root_as_given: Path | None = None
        if self.root is not None:
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise ConfigError(f"--media-root {root}: not a folder")
            # URLs may spell the root as it was given (through a symlink) or as it really is
            self.root_as_given = Path(os.path.normpath(root.absolute()))
            self.root = root.resolve()


@dataclass
class Media:
    """A resolved video or image: a local path or a decoded image, plus a temp file of ours to remove."""

    source: Path | np.ndarray
    temp: Path | None = field(default=None, repr=False)
    label: str = "the video"  # how error messages name a temp file (its path is ours, not the client's)

    def cleanup(self) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


class MediaResolver:
    """Resolves URLs under a `MediaPolicy`; temp files go to `tmp_dir`. Blocking: call it off the event loop."""

    def __init__(self, policy: MediaPolicy, tmp_dir: Path):
        self.policy = policy
        self.tmp_dir = tmp_dir

    def resolve(self, url: str, kind: Literal["video", "image"]) -> Media:
        head, colon, _ = url[:16].partition(":")  # (not urlsplit: it copies a 40 MB data: URL three times)
        scheme = head.lower() if colon else ""
        if scheme == "file":
            path = self._local_path(url)
            if kind == "image":
                return Media(decode_image(read_capped(path, self.policy.max_bytes)))
            return checked_resolution(Media(path))
        if scheme == "data":
            return checked_resolution(self._data(url, kind))
        if scheme in ("http", "https"):
            if not self.policy.allow_remote:
                raise MediaRefused(
                    "remote media URLs are disabled on this server (start it with "
                    "--allow-remote-media); send a data: URL instead"
                )
            return checked_resolution(self._remote(url, kind))
        raise InputError(f"unsupported media URL {_short(url)}: use file://, data: or http(s)://")

    # ---------------------------------------------------------------- file://
    def _local_path(self, url: str) -> Path:
        root = self.policy.root
        if root is None:
            raise MediaRefused("file:// URLs are disabled on this server (start it with --media-root DIR)")
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InputError(f"{_short(url)}: a file URL must be file:///absolute/path")
        raw = unquote(parts.path)
        if "\x00" in raw:
            raise InputError("file URL contains a NUL byte")
        lexical = Path(os.path.normpath(raw))
        outside = MediaRefused(f"{_short(url)}: only files under the server's media root may be read")
        if not (lexical.is_relative_to(root) or lexical.is_relative_to(self.policy.root_as_given)):
            raise outside
        real = lexical.resolve()  # follows symlinks: one inside the root may point anywhere
        if not real.is_relative_to(root):
            raise outside
        if not real.is_file():
            raise InputError(f"{_short(url)}: no such file under the media root")
        return real

    # ---------------------------------------------------------------- data:
    def _data(self, url: str, kind: str) -> Media:
        header, comma, payload = url[5:].partition(",")
        mime, *params = [p.strip().lower() for p in header.split(";")]
        if not comma or "base64" not in params:
            raise InputError("data URLs must be base64: data:<type>;base64,<payload>")
        if not mime.startswith(("video/", "image/")) or (kind == "image" and not mime.startswith("image/")):
            raise InputError(f"unsupported data URL type {mime!r} for {kind}_url")
        if len(payload) * 3 // 4 > self.policy.max_bytes:
            raise MediaTooLarge(f"the {kind} is larger than this server's limit of {_mib(self.policy.max_bytes)}")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("the data URL's payload is not valid base64") from None
        if mime.startswith("image/") and mime != "image/gif":
            return Media(decode_image(data))
        temp = self._temp_file(VIDEO_SUFFIXES.get(mime, ".mp4"))
        temp.write_bytes(data)
        return Media(temp, temp, "the data: URL's video")

    def _temp_file(self, suffix: str) -> Path:
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.tmp_dir)
        os.close(fd)
        return Path(name)

    # ---------------------------------------------------------------- http(s)://
    def _remote(self, url: str, kind: str) -> Media:
        suffix = Path(urlsplit(url).path).suffix.lower()
        temp = self._temp_file(suffix if suffix in KNOWN_SUFFIXES else ".mp4")
        try:
            with temp.open("wb") as out:
                mime = fetch(url, out, self.policy)
            if kind == "image" or (mime.startswith("image/") and mime != "image/gif"):
                image = decode_image(temp.read_bytes())
                temp.unlink()
                return Media(image)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return Media(temp, temp, f"the video from {_short(url)}")


def fetch(url: str, out: BinaryIO, policy: MediaPolicy) -> str:
    """Download `url` into `out` under the policy's address, size and time rules; the content type."""
    deadline = time.monotonic() + policy.fetch_timeout  # one deadline: DNS, connects, redirects, reads
    backend = _CheckedBackend(policy.address_allowed, deadline)
    with httpcore.ConnectionPool(network_backend=backend, max_connections=1, retries=0) as pool:
        for _ in range(policy.max_redirects + 1):
            parts = urlsplit(url)
            try:
                parts.port  # noqa: B018 -- raises ValueError for a port out of range (http://host:99999/)
            except ValueError:
                raise InputError(f"{_short(url)}: the port is not a number from 0 to 65535") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InputError(f"{_short(url)}: only http(s) URLs with a host can be fetched")
            try:
                with pool.stream(
                    "GET", url, headers=[(b"User-Agent", b"longvid-serve")], extensions={"timeout": _timeouts(deadline)}
                ) as response:
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
                    if response.status in (301, 302, 303, 307, 308) and "location" in headers:
                        url = urljoin(url, headers["location"])
                        continue
                    if response.status != 200:
                        raise InputError(f"fetching {_short(url)} failed: HTTP {response.status}")
                    if int(headers.get("content-length") or 0) > policy.max_bytes:
                        raise MediaTooLarge(
                            f"{_short(url)} is larger than this server's limit of {_mib(policy.max_bytes)}"
                        )
                    size = 0
                    for chunk in response.iter_stream():
                        size += len(chunk)
                        if size > policy.max_bytes:
                            raise MediaTooLarge(
                                f"{_short(url)} is larger than this server's limit of {_mib(policy.max_bytes)}"
                            )
                        if time.monotonic() > deadline:
                            raise httpcore.ReadTimeout("deadline")
                        out.write(chunk)
                    return headers.get("content-type", "").split(";")[0].strip().lower()
            except httpcore.TimeoutException:
                raise MediaTimeout(f"fetching {_short(url)} took longer than {policy.fetch_timeout:g} s") from None
            except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as e:
                raise InputError(f"fetching {_short(url)} failed: {type(e).__name__}") from None
    raise InputError(f"{_short(url)}: more than {policy.max_redirects} redirects")


class _CheckedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses the policy allows -- the checked one --
    with every DNS lookup, connect, read and write bounded by the download's one deadline."""

    def __init__(self, allowed: Callable[[IPAddress], bool], deadline: float):
        self.allowed, self.deadline = allowed, deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        infos = _resolve(host, port, _left(self.deadline))
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        if not addresses or not all(self.allowed(ip) for ip in addresses):
            raise MediaRefused(
                f"host {host!r} resolves to an address this server does not fetch from "
                "(loopback, private, link-local or reserved)"
            )
        stream = super().connect_tcp(str(addresses[0]), port, _left(self.deadline), local_address, socket_options)
        return _DeadlineStream(stream, self.deadline)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation waits at most until the deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float):
        self.stream, self.deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, _left(self.deadline))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, _left(self.deadline))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.stream.start_tls(ssl_context, server_hostname, _left(self.deadline)), self.deadline)

    def get_extra_info(self, info: str):
        return self.stream.get_extra_info(info)


_dns_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="longvid-dns")


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo with a timeout (it has none of its own); a lookup that hangs is left to finish alone."""
    lookup = _dns_pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        return lookup.result(timeout)
    except FutureTimeout:
        raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
    except (socket.gaierror, UnicodeError, OSError):
        raise InputError(f"cannot resolve host {host!r}") from None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the download's deadline passed")
    return left


def read_capped(path: Path, limit: int) -> bytes:
    """A file's bytes, refusing (before reading) one larger than `limit`."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise MediaTooLarge(f"the image file is larger than this server's limit of {_mib(limit)}")
    return data


def checked_resolution(media: Media) -> Media:
    """Refuse a video whose frames are larger than MAX_VIDEO_PIXELS, from its header, before decoding
    any frame (a small upload may claim 8000x8000: every decoded frame would be that large)."""
    if isinstance(media.source, np.ndarray):
        return media
    import av

    try:
        with av.open(str(media.source)) as container:
            sizes = [(s.codec_context.width, s.codec_context.height) for s in container.streams.video]
    except Exception:  # unreadable: the video reader says why, with the usual message
        return media
    for width, height in sizes:
        if width * height > MAX_VIDEO_PIXELS:
            media.cleanup()
            raise MediaTooLarge(
                f"the video's frames are {width}x{height}, more than this server's limit of "
                f"{MAX_VIDEO_PIXELS} pixels per frame"
            )
    return media


def decode_image(data: bytes) -> np.ndarray:
    """RGB uint8 [H, W, 3] from encoded image bytes, refusing decompression bombs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise MediaTooLarge(
                    f"the image has {img.width}x{img.height} pixels, more than this server's "
                    f"limit of {MAX_IMAGE_PIXELS}"
                )
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError:
        raise MediaTooLarge(f"the image has more pixels than this server's limit of {MAX_IMAGE_PIXELS}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError("not a readable image") from None


def _timeouts(deadline: float) -> dict[str, float]:
    left = _left(deadline)
    return {"connect": left, "read": left, "write": left, "pool": left}


def _short(url: str, n: int = 80) -> str:
    """A URL for error messages: never echo a whole data: payload back."""
    return url if len(url) <= n else url[: n - 3] + "..."


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"
