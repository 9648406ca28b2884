"""What RealtimeKit's own upload to a storage_config costs the archiver (issue 19).

The same recordings, uploaded by RealtimeKit (the simulator) to an S3 bucket (moto) or not,
archived by ``rtk-archiver archive`` from their storage_config, side by side in one run:

* ``delivered, sha256 proof`` (the default): the upload is there; the archiver downloads each
  recording once through the hashes, compares with the object's ETag md5, writes a sidecar;
* ``delivered, size proof`` (``ARCHIVE_RTK_UPLOAD_PROOF=size``): no download at all;
* ``missing``: RealtimeKit's upload failed; the archiver downloads and uploads each recording.

Wall time of the command, downloads the simulator served, bytes the archiver stored.

    python -m bench.delivery [--count 4] [--size 64M]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import BIN, archiver_env, checked, measure, moto_s3, parse_size, save, simulator, size_label

CASES = (
    ("delivered, sha256 proof", "complete", {}),
    ("delivered, size proof", "complete", {"ARCHIVE_RTK_UPLOAD_PROOF": "size"}),
    ("missing (archived)", "missing", {}),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--size", type=parse_size, default=64 * 1024 * 1024)
    args = parser.parse_args()
    import boto3

    results = []
    with tempfile.TemporaryDirectory(prefix="rtk-bench-delivery-") as tmp, moto_s3() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        for n, (label, upload, extra) in enumerate(CASES):
            bucket = f"rtk-bench-delivery-{n}"
            s3.create_bucket(Bucket=bucket)
            sim_args = ["--count", str(args.count), "--size", str(args.size), "--s3-bucket", bucket,
                        "--deliver-to", endpoint, "--upload", upload]
            with simulator(*sim_args) as sim:
                env = archiver_env(sim, Path(tmp) / f"prefect-{n}", ARCHIVE_S3_ENDPOINT_URL=endpoint,
                                   AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                                   **extra)
                warm = [str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01", "--until", "2000-01-02"]
                checked(measure(warm, env), "warm-up")
                report = Path(tmp) / f"report-{n}.json"
                m = checked(measure([str(BIN / "rtk-archiver"), "archive", "--report", str(report)], env), label)
                downloads = sum(sim.downloads().values())
            outcomes = json.loads(report.read_text())["outcomes"]
            kinds: dict[str, int] = {}
            for o in outcomes:
                kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
            stored = sum(o["bytes_transferred"] for o in outcomes)
            results.append({"case": label, "seconds": m.seconds, "downloads": downloads, "bytes_stored": stored,
                            "outcomes": kinds})
            print(f"{label}: {m.seconds:.1f} s, {downloads} download(s), {stored} bytes stored, {kinds}")
    base = results[2]["seconds"]
    print(f"\n{args.count} x {size_label(args.size)}, against moto on this machine (ratios to 'missing', same run):")
    for r in results:
        print(f"  {r['case']:<26} {r['seconds']:6.1f} s  x{r['seconds'] / base:.2f}  downloads {r['downloads']}  stored {r['bytes_stored']}")
    save("delivery", {"count": args.count, "size": args.size, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
