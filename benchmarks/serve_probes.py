"""The hostile-client probes of ``benchmarks/serve.py --arms probes``, against a running server.

Each probe sends requests (httpx, asyncio) and counts answers: 2xx, 4xx, 5xx and hangs (no
answer within the client's deadline: the server's request timeout plus a margin). Inputs: bad
files sent as every modality (random bytes, empty, other formats, truncated and mutated real
files), crafted record JSON, decompression bombs and header bombs of every reader, good and bad
requests mixed at high concurrency, stalled connections, and 16 concurrent maximum-size images
while the server's RSS is sampled.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import random
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Parts = dict[str, tuple[str | None, bytes]]


# -- sending ---------------------------------------------------------------------------------
async def _send(client: Any, url: str, parts: Parts, deadline: float) -> tuple[int | str, float]:
    t = time.perf_counter()
    files = {k.split("#")[0] if "#" in k else k: v for k, v in parts.items()}
    multi = (
        [(k.split("#")[0], v) for k, v in parts.items()] if any("#" in k for k in parts) else None
    )
    try:
        r = await asyncio.wait_for(client.post(url, files=multi or files), deadline)
        return r.status_code, time.perf_counter() - t
    except TimeoutError:
        return "hang", time.perf_counter() - t
    except Exception as exc:  # connection reset etc.: counted, never hidden
        return f"error:{type(exc).__name__}", time.perf_counter() - t


async def _many(
    url: str, token: str, bodies: list[Parts], concurrency: int, deadline: float
) -> Any:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    h = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=h, timeout=None, limits=limits) as client:

        async def one(p: Parts) -> Any:
            async with sem:
                return await _send(client, url, p, deadline)

        return await asyncio.gather(*(one(p) for p in bodies))


def probe(
    url: str, token: str, bodies: list[Parts], concurrency: int = 8, deadline: float = 45
) -> dict[str, Any]:
    """Send every body; the probe table's row: requests, 2xx, 4xx, 5xx, hangs (+ statuses)."""
    results = asyncio.run(_many(url, token, bodies, concurrency, deadline))
    return summarise([s for s, _ in results], [t for _, t in results])


def summarise(statuses: list[Any], seconds: list[float]) -> dict[str, Any]:
    counts = Counter(str(s) for s in statuses)
    ints = [s for s in statuses if isinstance(s, int)]
    return {
        "requests": len(statuses),
        "2xx": sum(200 <= s < 300 for s in ints),
        "4xx": sum(400 <= s < 500 for s in ints),
        "5xx": sum(s >= 500 for s in ints if s != 503),
        "503_busy": sum(s == 503 for s in ints),
        "hangs": counts.get("hang", 0),
        "other": sum(v for k, v in counts.items() if k.startswith("error")),
        "statuses": dict(sorted(counts.items())),
        "max_seconds": round(max(seconds, default=0.0), 2),
    }


# -- bad files -------------------------------------------------------------------------------
def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few bytes flipped, inserted, deleted, a header field made huge, or the file cut."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(max(len(b), 1))
        op = rng.choice(["flip", "insert", "delete", "cut", "big"])
        if op == "flip" and b:
            b[at] ^= 1 << rng.randrange(8)
        elif op == "insert":
            b[at:at] = rng.randbytes(rng.randint(1, 32))
        elif op == "delete":
            del b[at : at + rng.randint(1, 32)]
        elif op == "cut":
            del b[at:]
        else:
            b[at : at + 4] = b"\xff\xff\xff\x7f"
    return bytes(b)


def bad_files(samples: dict[str, bytes], rng: random.Random, n_mutated: int = 40) -> list[bytes]:
    """Random bytes, empty, every sample of another kind, truncated and mutated samples."""
    out = [b"", b"\0", rng.randbytes(16), rng.randbytes(4096), b"%PDF-1.4\n" + rng.randbytes(500)]
    out += [b"GIF89a" + rng.randbytes(100), b"PK\x03\x04" + rng.randbytes(200)]
    out += list(samples.values())  # the right file for one part is the wrong one for another
    for data in samples.values():
        out += [data[: len(data) // k] for k in (2, 3, 10, 100)]
        out += [mutate(data, rng) for _ in range(n_mutated // max(len(samples), 1))]
    return out


def sample_files(data: Path) -> dict[str, bytes]:
    """One real file of every format the readers take."""
    import nibabel as nib
    from PIL import Image
    from pydicom.data import get_testdata_file

    img = np.load(data / "medmnist" / "breastmnist.npz")["test_images"][0]
    out = {}
    for fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        b = io.BytesIO()
        Image.fromarray(img).save(b, fmt)
        out[fmt.lower()] = b.getvalue()
    out["dicom"] = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    out["nifti"] = gzip.compress(nib.Nifti1Image(np.random.rand(8, 8, 8).astype(np.float32),
                                                 np.eye(4)).to_bytes())  # fmt: skip
    out["npy"] = _npy(np.sin(np.arange(720) / 9).astype(np.float32))
    out["csv"] = b"MLII,V5\n" + b"\n".join(b"%d,%d" % (i % 50, -i % 50) for i in range(720))
    out["wfdb_header"] = (data / "mitdb" / "100.hea").read_bytes()
    out["wav"] = sorted((data / "heart_sounds" / "N").glob("*.wav"))[0].read_bytes()[:80_000]
    out["note"] = b"65 year old man, fever and cough for 5 days; bilateral opacities."
    return out


def _npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


CRAFTED_JSON = [
    '{"age": 1' + "0" * 400 + "}",
    '{"age": ' + "9" * 310 + "}",
    "[" * 100_000,
    '{"a":' * 50_000,
    '{"age": NaN}',
    '{"age": Infinity}',
    '{"age": true}',
    '{"age": {"x": 1}}',
    '{"age": [1, 2]}',
    '{"age": 1e400}',
    '{"age": -1e400}',
    '{"nope": 1}',
    "[1, 2]",
    '"text"',
    "null",
    "{}",
    '{"age": null}',
    '{"sex": ""}',
    '{"age": "' + "9" * 5000 + '"}',
    '{"age": 65, "age": 66}',
    '{"age": 65' + ', "x": 1' * 5000 + "}",
    "\xff\xfe{}",
    '{"age": 65}' + " " * 10,
    '{"age": "\\ud800"}',
]


def crafted_json(rng: random.Random, n_random: int = 40) -> list[bytes]:
    out = [t.encode("latin-1") if t.startswith("\xff") else t.encode() for t in CRAFTED_JSON]
    alphabet = '{}[]":,0123456789.eE+-tfnul aesxgNIyi\\'
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))).encode()
            for _ in range(n_random)]  # fmt: skip
    return out


# -- bombs -----------------------------------------------------------------------------------
def png_bomb(width: int, height: int) -> bytes:
    """A real grey PNG of ``width`` x ``height`` zeros (rows compressed as they are made)."""
    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gradient_png(side: int) -> bytes:
    """A ``side`` x ``side`` grey gradient PNG: small file, full-size decode (a maximum-size
    request at the pixel limit)."""
    from PIL import Image

    a = (np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG", compress_level=6)
    return b.getvalue()


def nifti_gzip_bomb(side: int = 1500) -> bytes:
    """A gzip NIfTI whose header declares side^3 float32 voxels, with side^3 x 4 zero bytes."""
    import nibabel as nib

    hdr = bytearray(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_bytes()[:352])
    hdr[42:48] = struct.pack("<hhh", side, side, side)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(bytes(hdr))
        chunk = b"\0" * (1 << 24)
        for _ in range(side**3 * 4 // len(chunk)):
            gz.write(chunk)
    return out.getvalue()


def bombs(data: Path) -> dict[str, tuple[str, bytes]]:
    """(modality type, file) of every bomb: decoded sizes far beyond the limits."""
    wav = sorted((data / "heart_sounds" / "N").glob("*.wav"))[0].read_bytes()[:4096]
    wav_big = bytearray(wav)
    pos = wav_big.find(b"data")
    wav_big[pos + 4 : pos + 8] = struct.pack("<I", 0xFFFFFFF0)
    hea = b"bomb 2 360 999999999999\nbomb.dat 16 200 11 0 0 0 0 I\nbomb.dat 16 200 11 0 0 0 0 II\n"
    npy_bomb = _npy(np.zeros((1, 10), np.float32)).replace(b"(1, 10)", b"(1, 99999999999)")
    dcm = _dicom_bomb()
    return {
        "png 30000 x 30000 (875 KB class)": ("image", png_bomb(30000, 30000)),
        "png 12000 x 12000": ("image", png_bomb(12000, 12000)),
        "nifti.gz 1500^3 float32": ("image", nifti_gzip_bomb(1500)),
        "dicom 65535 x 65535 x 1000 frames": ("image", dcm),
        "npy header (1, 1e11)": ("signal", npy_bomb),
        "wav header 4e9 frames": ("audio", bytes(wav_big)),
        "csv 20,000 columns": (
            "signal",
            (",".join(f"c{i}" for i in range(20000)) + "\n" + ",".join(["1"] * 20000)).encode(),
        ),  # fmt: skip
        "wfdb header 1e12 samples": ("signal#wfdb", hea),
        "json 100,000 [": ("tabular", b"[" * 100_000),
    }


def _dicom_bomb() -> bytes:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


# -- stalled clients -------------------------------------------------------------------------
def stalled(
    url: str, path: str, token: str, n: int, header_timeout: float, timeout: float
) -> dict[str, Any]:
    """``n`` connections that send nothing and ``n`` whose body stops: closed / 408 in time?"""
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(n)]
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")  # fmt: skip
    slow = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        s.sendall(head.encode())
        slow.append(s)
    t0 = time.monotonic()
    statuses: list[Any] = []
    for s, limit in [(s, header_timeout) for s in idle] + [(s, timeout) for s in slow]:
        s.settimeout(max(limit + 5 - (time.monotonic() - t0), 0.1))
        try:
            data = s.recv(64)
            statuses.append("closed" if data == b"" else int(data.split()[1]))
        except TimeoutError:
            statuses.append("hang")
        except (OSError, ValueError, IndexError):
            statuses.append("closed")
        s.close()
    out = summarise(statuses, [time.monotonic() - t0])
    out["closed_idle"] = sum(st == "closed" for st in statuses[:n])
    return out


# -- memory ----------------------------------------------------------------------------------
def peak_rss(pid: int, run: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``run()`` while sampling the server's RSS every 10 ms: (result, MB figures)."""
    import threading

    import psutil

    proc = psutil.Process(pid)
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = run()
    finally:
        done.set()
        t.join()
    mb = 1 << 20
    return result, {
        "baseline_mb": base / mb,
        "peak_mb": peak[0] / mb,
        "growth_mb": (peak[0] - base) / mb,
    }


async def healthz_during(url: str, work: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run blocking ``work`` in a thread while timing /healthz every 20 ms: (result, latency
    p50 / p95 / max in ms)."""
    import httpx

    seconds: list[float] = []
    task = asyncio.get_running_loop().run_in_executor(None, work)
    async with httpx.AsyncClient(timeout=30) as c:
        while not task.done():
            t = time.perf_counter()
            await c.get(url + "/healthz")
            seconds.append(time.perf_counter() - t)
            await asyncio.sleep(0.02)
    ms = np.asarray(seconds or [0.0]) * 1000
    return await task, {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "max_ms": round(float(ms.max()), 1),
        "polls": len(seconds),
    }


def as_parts(kind: str, part: str, data: bytes) -> Parts:
    """A body of one part: a file for images / signals / audio, a field for notes / records."""
    if kind == "signal#wfdb":
        return {f"{part}#0": ("bomb.hea", data), f"{part}#1": ("bomb.dat", b"\0" * 64)}
    return {part: (None, data) if kind in ("text", "tabular") else ("upload", data)}


def json_dumps(x: Any) -> bytes:
    return json.dumps(x).encode()
