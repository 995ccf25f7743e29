"""Compiles every kernel variant that bench_kernels.py's shared-prefix sweeps would launch on a
GPU, for a GPU target (default sm_90), on a machine without one: each setting of
``shared_sweep`` and of the merge sweep's likely settings (``merge_warmups``), the shared-prefix
kernel with the constants its wrapper would launch it with (``launch_constants``) and, for a
launched merge, the merge kernel. A variant that fails to compile there fails a row of the GPU's
sweep; here it costs no device time. Prints registers a thread, stack frame (spills) and
programs a multiprocessor per variant, then the failures; exits 1 if any. Unset TRITON_INTERPRET
first; run with the Triton the GPU runs (3.6 in the device image) to check what it will compile:

    python benchmarks/compile_sweep.py [--arch 90] [--first N]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

SHAPE = {"group": 4, "head_dim": 128, "block_size": 16, "max_members": 16, "prefix_blocks": 128}  # bench's case


def variants(first: int | None = None):
    """(kernel name, constants, launch options) of the sweeps' settings, each once; ``first``: of
    the first settings only. (``constants["parts"]``: the partials' element type, not a constant.)"""
    import torch
    import triton

    from kernels.shared_prefix import launch_constants
    from shared_prefix_case import merge_warmups, shared_sweep

    seen, found = set(), []
    for options in (shared_sweep(False) + merge_warmups(False))[:first]:
        splits = triton.cdiv(SHAPE["prefix_blocks"], options["prefix_blocks_per_split"])
        constants = launch_constants(torch.bfloat16, SHAPE["group"], SHAPE["head_dim"], SHAPE["block_size"],
                                     SHAPE["max_members"], splits, options["members_per_program"], options["pages"],
                                     options["fused_merge"], options["prefix_first"],
                                     merge_eager=options.get("merge_eager", False))
        partials = "fp32" if options.get("fp32_partials", True) else "bf16"
        launch = {"num_warps": options["num_warps"], "num_stages": options["num_stages"]}
        found.append(("_shared_prefix_kernel", {**constants, "parts": partials}, launch))
        if not options["fused_merge"]:
            found.append(("_merge_rows_kernel", {"HEAD_DIM": SHAPE["head_dim"], "BLOCK_P": constants["BLOCK_P"],
                                                 "SINKS": False, "ROWS": options.get("merge_rows", 1),
                                                 "EAGER": options.get("merge_eager", False), "parts": partials},
                          {"num_warps": options.get("merge_warps") or 4}))
    for name, constants, launch in found:
        key = (name, tuple(sorted(constants.items())), tuple(sorted(launch.items())))
        if key not in seen:
            seen.add(key)
            yield name, constants, launch


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_sweep: unset TRITON_INTERPRET first (interpreted kernels cannot be compiled)")
        return 2
    values = {"--arch": "90", "--first": None}
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag not in values or not args or not args[0].isdigit():
            print("usage: python benchmarks/compile_sweep.py [--arch 90] [--first N]  (N, the arch: whole numbers; "
                  f"got {' '.join(argv)!r})", file=sys.stderr)
            return 2
        values[flag] = args.pop(0)
    arch, first = int(values["--arch"]), values["--first"] and int(values["--first"])
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as kernels.compile_check compiles
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.compile_check import aligned_attrs, cubin_resources, programs_per_multiprocessor, signatures

    kernels = {kernel.__name__: (kernel, signature) for kernel, signature, _ in signatures("bf16")}
    failed, started, count = [], time.perf_counter(), 0
    for name, constants, launch in variants(first):
        kernel, signature = kernels[name]
        signature = {**signature, "parts_ptr": f"*{constants['parts']}"}
        given = {key: value for key, value in constants.items() if key in kernel.arg_names}
        label = f"{name} {given} {launch} partials {constants['parts']}"
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=given,
                                                attrs=aligned_attrs(kernel, signature)),
                                      target=GPUTarget("cuda", arch, 32), options=launch)
        except Exception as error:  # noqa: BLE001 - every variant is tried; the failures are listed
            failed.append(f"{label}: {type(error).__name__}: {str(error)[:300]}")
            print(f"FAILED {failed[-1]}", flush=True)
            continue
        count += 1
        used = cubin_resources(compiled.asm["cubin"])
        programs = programs_per_multiprocessor(used["registers"], launch["num_warps"], compiled.metadata.shared)
        print(f"ok {label}: {used['registers']} registers, stack frame {used['stack_frame']} B, {programs} programs a "
              f"multiprocessor", flush=True)
    print(f"compile_sweep: {count} variants compiled for sm_{arch} by Triton {triton.__version__} in "
          f"{time.perf_counter() - started:.0f} s, {len(failed)} failed")
    for line in failed:
        print(f"failed: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
