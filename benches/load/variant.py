#!/usr/bin/env python3
"""mesh-proxy built with a patch from benches/load/variants/ applied: the same commit with
one part of the stack taken out, to run beside the ordinary build and see what that part
costs in the load comparison (compare.py) and in instructions (callgrind.py).

    python3 benches/load/variant.py no-telemetry      # writes target/release/mesh-proxy.no-telemetry

Then, e.g., `ROUNDS=7 compare.py haproxy mesh no-telemetry=target/release/mesh-proxy.no-telemetry`
or `MESH_BIN=target/release/mesh-proxy.no-telemetry CONNS=50 callgrind.py mesh`.

The variants (each a `git diff` of mesh-proxy/src/stack.rs):

- `no-telemetry`: the outbound stack without its trace and record layers: no `traceparent`,
  no `x-request-id`, no Istio metrics, access log or spans for outbound requests (the
  inbound and gateway stacks keep theirs);
- `no-idle-layers`: the outbound stack without the rate limit, fault injection and mirror
  layers, which the load comparison's configuration leaves idle (no limit, no fault, no
  mirror): what an idle layer costs.

Steps: a detached git worktree of HEAD under target/variant-src/NAME (the working tree's
uncommitted changes are not in it: commit first to measure them), the patch applied there
(`git apply`; a patch that no longer applies says so and stops: refresh it from a `git diff`
of the same edit), `cargo build --release -p mesh-proxy` with its own target directory
(target/variants; the first build compiles every dependency, about 7 minutes on 2 cores),
the binary copied to target/release/mesh-proxy.NAME, the worktree removed. A measurement,
not a build step of the project: no variant is shipped.

`head` is HEAD without a patch. Knobs: RUSTFLAGS (passed to cargo: the same source built
another way, e.g. `-C llvm-args=-align-all-functions=6`; give such a build a target directory
of its own with CARGO_TARGET_DIR, or it rebuilds every crate each time the flags change) and
SUFFIX (appended to the output's name).
"""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = os.path.join(HERE, "variants")
SUFFIX = os.environ.get("SUFFIX", "")


def root():
    return subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True, cwd=HERE).stdout.strip()


def build(name, top):
    patch = os.path.join(VARIANTS, f"{name}.patch")
    if name != "head" and not os.path.exists(patch):
        known = ["head"] + sorted(f[:-len(".patch")] for f in os.listdir(VARIANTS)
                                  if f.endswith(".patch"))
        sys.exit(f"variant.py: no variant {name!r} (known: {', '.join(known)})")
    src = os.path.join(top, "target", "variant-src", name)
    if os.path.exists(src):
        subprocess.run(["git", "worktree", "remove", "--force", src], cwd=top,
                       capture_output=True)
        shutil.rmtree(src, ignore_errors=True)
    # forget worktrees whose directory is gone (an interrupted run)
    subprocess.run(["git", "worktree", "prune"], cwd=top, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", src, "HEAD"], cwd=top, check=True,
                   capture_output=True)
    try:
        if name != "head":
            applied = subprocess.run(["git", "apply", patch], cwd=src, capture_output=True,
                                     text=True)
            if applied.returncode != 0:
                sys.exit(f"variant.py: {name}.patch no longer applies to HEAD; make the same "
                         f"edit and save its `git diff` as {patch}:\n{applied.stderr}")
        env = dict(os.environ)
        # absolute: cargo runs in the worktree
        env["CARGO_TARGET_DIR"] = os.path.abspath(
            env.get("CARGO_TARGET_DIR") or os.path.join(top, "target", "variants"))
        subprocess.run(["cargo", "build", "--release", "-p", "mesh-proxy"], cwd=src, env=env,
                       check=True)
        out = os.path.join(top, "target", "release", f"mesh-proxy.{name}{SUFFIX}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(os.path.join(env["CARGO_TARGET_DIR"], "release", "mesh-proxy"), out)
        flags = f", RUSTFLAGS={env['RUSTFLAGS']!r}" if env.get("RUSTFLAGS") else ""
        what = "HEAD as it is" if name == "head" else f"HEAD with {name}.patch"
        print(f"variant.py: {out} ({what}{flags})")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", src], cwd=top,
                       capture_output=True)


def main(names):
    if not names:
        sys.exit(__doc__)
    top = root()
    for name in names:
        build(name, top)


if __name__ == "__main__":
    main(sys.argv[1:])
