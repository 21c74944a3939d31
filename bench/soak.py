"""Soak: mixed Detect traffic at the highest rate the machine sustains while a new version is
published every 2 s and the embedder restarts once.

    python -m bench.soak [--seconds 60] [--publish-every 2] [--clients 4]

A detector process serves a tabular model (`live`, republished every `--publish-every`
seconds, every other version pushed with LoadModel, the rest found by polling) and an image
model over an embedder process (a small ViT). Closed-loop clients send one-row and 64-row
Detect calls and DetectImages calls without pause; halfway through, the embedder gets
SIGTERM and a new one starts on the same port. Reported: calls by kind and per second,
failed calls (must be 0), versions published and served, whether every client saw the
served version rise monotonically, and the detector's resident memory after warm-up and at
the end (must stay within 10%). The baseline is the detector's own memory after warm-up.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import grpc
import numpy as np
import psutil

from bench.machine import describe
from oddity.v1 import detector_pb2, detector_pb2_grpc, embedder_pb2, embedder_pb2_grpc
from tests.support import drawings, encoders, models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel, embedder_process

D = 16
WARMUP_SHARE = 0.2  # memory baseline taken after this share of the window


@dataclass
class SoakResult:
    seconds: float
    calls: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    published: int = 0
    served_versions: set[int] = field(default_factory=set)
    non_monotone_clients: int = 0
    rss_after_warmup: int = 0
    rss_at_end: int = 0
    embedder_restarted: bool = False

    @property
    def rss_growth(self) -> float:
        return self.rss_at_end / self.rss_after_warmup - 1

    def report(self) -> str:
        total = sum(self.calls.values())
        lines = [
            f"window: {self.seconds:.0f} s; calls: {total} ({total / self.seconds:.0f}/s) "
            + ", ".join(f"{kind} {n}" for kind, n in sorted(self.calls.items())),
            f"failed calls: {len(self.failures)}" + (f" (first: {self.failures[0]})" if self.failures else ""),
            f"versions published: {self.published}; versions seen by clients: {len(self.served_versions)}; "
            f"clients whose version went backwards: {self.non_monotone_clients}",
            f"embedder restarted: {self.embedder_restarted}",
            f"detector RSS: {self.rss_after_warmup / 2**20:.1f} MiB after warm-up -> "
            f"{self.rss_at_end / 2**20:.1f} MiB at the end ({self.rss_growth:+.1%})",
        ]
        return "\n".join(lines)


def _embedder(cache: Path, vit: Path, port: int = 0) -> ServiceProcess:
    return embedder_process(cache, {"vit": {"model_id": str(vit), "modality": "image"}}, port=port)


def run_soak(seconds: float = 60.0, publish_every: float = 2.0, clients: int = 4) -> SoakResult:
    result = SoakResult(seconds=seconds)
    rng = np.random.default_rng(0)
    fits = [models.fit_pca_group(models.normal_rows(400, D, seed=s), components=2, seed=s) for s in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repository = root / "models"
        repository.mkdir()
        vit = encoders.tiny_vit(root / "vit")
        embedder = _embedder(root / "cache", vit)
        detector = None
        try:
            embedder.wait_ready("oddity.v1.Embedder", timeout=180)
            with channel(embedder.target) as ch:
                info = embedder_pb2_grpc.EmbedderStub(ch).GetInfo(embedder_pb2.GetInfoRequest(model="vit"), timeout=30)
            models.publish_image_model(repository, info.models[0])
            models.publish_simple(repository, "live", fits[0], dimension=D)
            result.published = 1
            detector = ServiceProcess(
                "oddity.detector.main",
                [
                    "--model-repository", str(repository), "--poll-interval-seconds", "1",
                    "--embedder", embedder.target, "--embedder-timeout-seconds", "60",
                ],
            ).start()
            detector.wait_ready("oddity.v1.Detector")
            process = psutil.Process(detector.proc.pid)

            one_row = detect_request("live", models.normal_rows(1, D, seed=7))
            batch = detect_request("live", models.normal_rows(64, D, seed=8))
            images = detector_pb2.DetectImagesRequest(
                model="pictures",
                images=[drawings.drawing(5.0, rng), drawings.drawing(8.0, rng)],
                routing_values=[5, 8],
            )
            stop = threading.Event()
            lock = threading.Lock()

            def client(index: int) -> None:
                versions: list[int] = []
                with channel(detector.target) as ch:
                    stub = detector_pb2_grpc.DetectorStub(ch)
                    calls = [("detect_1", stub.Detect, one_row), ("detect_64", stub.Detect, batch)]
                    if index == 0:
                        calls = [("detect_images", stub.DetectImages, images)]
                    i = 0
                    while not stop.is_set():
                        kind, call, request = calls[i % len(calls)]
                        i += 1
                        try:
                            response = call(request, timeout=90)
                        except grpc.RpcError as exc:
                            with lock:
                                result.failures.append(f"{kind}: {exc.code()}: {exc.details()}")
                            continue
                        with lock:
                            result.calls[kind] += 1
                        if kind != "detect_images":
                            versions.append(response.model_version)
                with lock:
                    result.served_versions.update(versions)
                    if any(b < a for a, b in pairwise(versions)):
                        result.non_monotone_clients += 1

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients + 1)]
            for thread in threads:
                thread.start()
            start = time.monotonic()
            next_publish = start + publish_every
            restart_at = start + seconds / 2
            warmed_at = start + seconds * WARMUP_SHARE
            with channel(detector.target) as ch:
                admin = detector_pb2_grpc.DetectorStub(ch)
                while (now := time.monotonic()) < start + seconds:
                    if not result.rss_after_warmup and now >= warmed_at:
                        result.rss_after_warmup = process.memory_info().rss
                    if now >= next_publish:
                        version = models.publish_simple(
                            repository, "live", fits[result.published % len(fits)], dimension=D
                        )
                        result.published = version
                        if version % 2 == 0:
                            admin.LoadModel(detector_pb2.LoadModelRequest(model="live"), timeout=30)
                        next_publish += publish_every
                    if not result.embedder_restarted and now >= restart_at:
                        port = embedder.port
                        embedder.terminate()
                        embedder = _embedder(root / "cache", vit, port)
                        result.embedder_restarted = True
                    time.sleep(0.02)
            result.rss_at_end = process.memory_info().rss
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            if detector is not None:
                detector.kill()
            embedder.kill()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--publish-every", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(describe(), flush=True)
    result = run_soak(args.seconds, args.publish_every, args.clients)
    print(result.report())
    ok = (
        not result.failures
        and result.non_monotone_clients == 0
        and result.rss_growth <= 0.10
        and result.embedder_restarted
    )
    print("PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
