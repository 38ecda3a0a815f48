"""Compile ``serve/proto/grpc_predict_v2.proto`` into the descriptor set resnetkit loads.

Run after changing the ``.proto`` (needs ``grpcio-tools``, a test dependency)::

    python scripts/gen_grpc.py          # writes src/resnetkit/serve/proto/grpc_predict_v2.desc
    python scripts/gen_grpc.py --check  # exit 1 if the committed descriptor is stale
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[1] / "src" / "resnetkit" / "serve" / "proto"
PROTO = PROTO_DIR / "grpc_predict_v2.proto"
DESCRIPTOR = PROTO_DIR / "grpc_predict_v2.desc"


def compile_descriptor() -> bytes:
    """The serialized ``FileDescriptorSet`` of the ``.proto``, without source info."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.desc"
        # The file is named resnetkit/... in the descriptor, so it never collides with another
        # library's grpc_predict_v2.proto in a descriptor pool.
        status = protoc.main(
            ["protoc", f"-I{PROTO_DIR.parent.parent.parent}", f"--descriptor_set_out={out}",
             str(PROTO.relative_to(PROTO_DIR.parent.parent.parent))]
        )  # fmt: skip
        if status != 0:
            raise SystemExit(f"protoc failed on {PROTO} (exit {status})")
        return out.read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args()
    compiled = compile_descriptor()
    if args.check:
        if not DESCRIPTOR.exists() or DESCRIPTOR.read_bytes() != compiled:
            print(f"{DESCRIPTOR} is stale: run python scripts/gen_grpc.py", file=sys.stderr)
            return 1
        return 0
    DESCRIPTOR.write_bytes(compiled)
    print(f"wrote {DESCRIPTOR} ({len(compiled)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
