"""Compiles every kernel for a GPU target (default sm_90, Hopper) without running anything, so a
kernel that would not build is caught on a machine with no GPU. Run in a process where
TRITON_INTERPRET is unset: ``python -m kernels.compile_check [arch]``.

Each kernel is compiled as Triton's launcher specialises it for a real model on a GPU: every
pointer and the strides that real shapes make multiples of 16 elements marked divisible by 16
(``ALIGNED``; Llama-3.1-8B's K/V cache strides are 16384, 1024 and 128). The printed load mix of
the PTX says whether device memory is read 16 bytes per thread (``ld.global.v4``, ``cp.async``
copies of 16 bytes, pipelined) or element by element (``ld.global.b16`` for bf16): memory-bound
kernels need the former. Without the hints every K/V load compiles to 2-byte loads.
"""
from __future__ import annotations

import os
import re
import struct
import sys
import time

# integer arguments that are multiples of 16 for real models (strides of [.., heads, 128]
# tensors, the split length); the launcher marks them so at run time, and so does this check
ALIGNED = {"stride_qs", "stride_qt", "stride_kb", "stride_ks", "stride_kh", "blocks_per_split", "hidden", "width"}
WIDE = re.compile(r"ld\.global(?:\.nc)?\.v4\.|cp\.async\.cg\.shared\.global")  # 16 bytes a thread
NARROW = re.compile(r"ld\.global(?:\.nc)?\.b16\b")  # one bf16 element a thread
ACQ_REL = re.compile(r"\batom\.[\w.]*\bacq_rel\b")  # the fused merge's counts (qualifiers in any order)
BARRIER = re.compile(r"\bbar\.sync\b|\bbarrier\.sync\b")


def load_mix(ptx: str) -> dict[str, int]:
    """Global loads in ``ptx``: 16 bytes a thread (vector or async copies) and 2 bytes a thread."""
    return {"wide": len(WIDE.findall(ptx)), "narrow": len(NARROW.findall(ptx))}


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """Registers a thread of the cubin's kernel takes and its stack frame in bytes (local memory:
    registers spilled, mostly), from its ELF's ``.nv.info`` attributes (EIATTR_REGCOUNT,
    EIATTR_FRAME_SIZE), as ``ptxas -v`` prints them; 0 where one is not found."""
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)

    def section(index: int) -> tuple[int, int, int]:  # name offset, file offset, size
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", cubin, shoff + index * shentsize)
        return name, offset, size

    found = {"registers": 0, "stack_frame": 0}
    strings = section(shstrndx)[1]
    for index in range(shnum):
        name, offset, size = section(index)
        if not cubin[strings + name:].startswith(b".nv.info"):
            continue
        position = offset
        while position < offset + size:
            kind, attribute = cubin[position], cubin[position + 1]
            if kind == 0x04:  # a value of the length its next two bytes give
                length, = struct.unpack_from("<H", cubin, position + 2)
                if attribute in (0x2F, 0x11):  # EIATTR_REGCOUNT, EIATTR_FRAME_SIZE: (symbol, value)
                    found["registers" if attribute == 0x2F else "stack_frame"] = \
                        struct.unpack_from("<II", cubin, position + 4)[1]
                position += 4 + length
            elif kind in (0x01, 0x02, 0x03):  # no value, one byte, two bytes
                position += (2, 4, 4)[kind - 1]
            else:
                break
    return found


def programs_per_multiprocessor(registers: int, warps: int, shared: int) -> int:
    """Programs of a kernel resident on one Hopper multiprocessor at once: 65,536 registers
    (given out 256 a warp), 64 warps, 32 blocks, 228 KB of shared memory (1 KB of it a block)."""
    by_registers = 65536 // (-(-registers * 32 // 256) * 256) // warps if registers else 32
    return min(by_registers, 64 // warps, 32, 233472 // (shared + 1024))


def aligned_attrs(kernel, signature: dict) -> dict:
    return {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name, kind in signature.items()
            if kind.startswith("*") or name in ALIGNED}


def shared_prefix_constants(dtype: str, group: int = 4, head_dim: int = 128, splits: int = 7, **options) -> dict:
    """The shared-prefix kernel's constants as its wrapper derives them (``launch_constants``) for
    a group of 16 requests over a prefix in ``splits`` splits, 16-token blocks: by default
    Llama's heads (4 query heads a kv head, 128 wide) and a whole group a program."""
    import torch

    from .shared_prefix import launch_constants

    return launch_constants({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype], group, head_dim, 16, 16, splits,
                            **options)


def signatures(dtype: str) -> list[tuple[object, dict, dict]]:
    from .common import _merge_rows_kernel
    from .fused_moe import _down_kernel, _gate_up_kernel
    from .kv_store import _kv_store_kernel
    from .paged_decode import _paged_decode_kernel
    from .paged_prefill import _paged_prefill_kernel
    from .rmsnorm import _rmsnorm_kernel
    from .rope import _rope_kernel
    from .shared_prefix import _shared_prefix_kernel

    ptr, precision = f"*{dtype}", "ieee" if dtype == "fp32" else "tf32"
    i32, f32, c = "i32", "fp32", "constexpr"
    attention = {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "DOT_PRECISION": precision}
    merge = {"parts_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": ptr, "sinks_ptr": ptr, "num_rows": i32,
             "num_parts": i32, "heads": i32, "HEAD_DIM": c, "BLOCK_P": c, "SINKS": c, "ROWS": c, "EAGER": c}
    return [
        (_paged_decode_kernel,
         {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "tables_ptr": "*i32", "context_ptr": "*i32", "parts_ptr": "*fp32",
          "lse_ptr": "*fp32", "stride_qs": i32, "stride_kb": i32, "stride_ks": i32, "stride_kh": i32, "stride_t": i32,
          "blocks_per_split": i32, "num_splits": i32, "scale": f32, "window": i32, "GROUP": c, "BLOCK_G": c,
          "HEAD_DIM": c, "BLOCK_SIZE": c, "DOT_PRECISION": c, "WINDOW": c},
         {**attention, "BLOCK_G": 16, "WINDOW": False}),
        (_shared_prefix_kernel,
         {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "tables_ptr": "*i32", "context_ptr": "*i32", "skip_ptr": "*i32",
          "group_rows_ptr": "*i32", "group_size_ptr": "*i32", "group_prefix_ptr": "*i32", "group_seq_ptr": "*i32",
          "parts_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": ptr, "sinks_ptr": ptr, "arrivals_ptr": "*i32",
          "num_seqs": i32, "num_groups": i32, "prefix_splits": i32, "split_blocks": i32, "kv_heads": i32,
          "heads": i32,
          "stride_qs": i32, "stride_kb": i32, "stride_ks": i32, "stride_kh": i32, "stride_t": i32, "stride_g": i32,
          "scale": f32, "GROUP": c, "BLOCK_G": c, "BLOCK_M": c, "HEAD_DIM": c, "BLOCK_SIZE": c, "DOT_PRECISION": c,
          "PAGES": c, "FUSED_MERGE": c, "PREFIX_FIRST": c, "MEMBERS": c, "BLOCK_R": c, "BLOCK_P": c, "SINKS": c,
          "MEMBER_TILES": c, "MERGE_EAGER": c, "MERGE_MEMBERS": c, "PREFIX_CHUNK": c},
         shared_prefix_constants(dtype)),
        (_paged_prefill_kernel,
         {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "out_ptr": ptr, "tables_ptr": "*i32", "query_start_ptr": "*i32",
          "query_len_ptr": "*i32", "context_ptr": "*i32", "stride_qt": i32, "stride_kb": i32, "stride_ks": i32,
          "stride_kh": i32, "stride_t": i32, "scale": f32, "window": i32, "sinks_ptr": ptr, "GROUP": c,
          "BLOCK_M": c, "HEAD_DIM": c, "BLOCK_SIZE": c, "DOT_PRECISION": c, "WINDOW": c, "SINKS": c},
         {**attention, "BLOCK_M": 16, "WINDOW": False, "SINKS": False}),  # the wrapper's block_m
        (_merge_rows_kernel, merge, {"HEAD_DIM": 128, "BLOCK_P": 4, "SINKS": False, "ROWS": 1, "EAGER": False}),
        (_merge_rows_kernel, merge, {"HEAD_DIM": 128, "BLOCK_P": 16, "SINKS": False, "ROWS": 8, "EAGER": False}),
        (_rmsnorm_kernel,
         {"x_ptr": ptr, "residual_ptr": ptr, "weight_ptr": ptr, "out_ptr": ptr, "new_residual_ptr": ptr,
          "hidden": i32, "eps": f32, "HAS_RESIDUAL": c, "BLOCK": c, "GEMMA": c, "OFFSET": c},
         {"HAS_RESIDUAL": True, "BLOCK": 4096, "GEMMA": False, "OFFSET": 1.0}),
        (_rope_kernel,
         {"x_ptr": ptr, "positions_ptr": "*i64", "inv_freq_ptr": "*fp32", "heads": i32, "HEAD_DIM": c, "HALF": c,
          "BLOCK_H": c},
         {"HEAD_DIM": 128, "HALF": 64, "BLOCK_H": 32}),
        # Qwen3-30B-A3B's experts: hidden 2048, width 768
        (_gate_up_kernel,
         {"x_ptr": ptr, "w_ptr": ptr, "out_ptr": ptr, "sorted_ptr": "*i32", "block_expert_ptr": "*i32",
          "bias_ptr": ptr, "pairs": i32, "top_k": i32, "hidden": i32, "width": i32, "limit": f32, "alpha": f32,
          "BLOCK_M": c, "BLOCK_N": c, "BLOCK_K": c, "DOT_PRECISION": c, "BIAS": c, "CLAMP": c, "GELU": c},
         {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "DOT_PRECISION": precision, "BIAS": False, "CLAMP": False,
          "GELU": False}),
        (_down_kernel,
         {"act_ptr": ptr, "w_ptr": ptr, "weights_ptr": "*fp32", "out_ptr": ptr, "sorted_ptr": "*i32",
          "block_expert_ptr": "*i32", "bias_ptr": ptr, "pairs": i32, "hidden": i32, "width": i32, "BLOCK_M": c,
          "BLOCK_N": c, "BLOCK_K": c, "DOT_PRECISION": c, "BIAS": c},
         {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "DOT_PRECISION": precision, "BIAS": False}),
        (_kv_store_kernel,
         {"k_ptr": ptr, "v_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "slots_ptr": "*i64", "ROW": c,
          "BLOCK": c},
         {"ROW": 1024, "BLOCK": 1024}),
    ]


def gpt_oss_variants(dtype: str) -> list[tuple[object, dict, dict]]:
    """The kernels gpt-oss runs differently, at its shapes (head size 64, 8 query heads a kv
    head, experts 2,880 wide): sliding windows, attention sinks, expert biases and the clamped
    SwiGLU; and Gemma 3's RMSNorm."""
    oss = {"GROUP": 8, "HEAD_DIM": 64}
    variants = []
    for kernel, signature, constants in signatures(dtype):
        name = kernel.__name__
        if name in ("_paged_decode_kernel", "_paged_prefill_kernel"):
            constants = {**constants, **oss, "WINDOW": True, **({"SINKS": True} if "SINKS" in constants else {})}
        elif name == "_merge_rows_kernel" and constants["ROWS"] == 1:
            constants = {**constants, "HEAD_DIM": 64, "SINKS": True}
        elif name in ("_gate_up_kernel", "_down_kernel"):
            constants = {**constants, "BIAS": True, **({"CLAMP": True} if "CLAMP" in constants else {})}
        elif name == "_rmsnorm_kernel":  # Gemma 3's norm (its hidden size 5,376: a block of 8,192)
            constants = {**constants, "BLOCK": 8192, "GEMMA": True}
        else:
            continue
        variants.append((kernel, signature, constants))
    return variants


def gemma4_variants(dtype: str) -> list[tuple[object, dict, dict]]:
    """Gemma 4 31B's full layers (head size 512, 8 query heads a kv head) through the attention
    kernels, its RMSNorm (times w: offset 0) and 26B-A4B's GeGLU experts; in bf16, as it is served."""
    if dtype != "bf16":
        return []
    variants = []
    for kernel, signature, constants in signatures(dtype):
        if kernel.__name__ == "_shared_prefix_kernel":  # 2 members a prefix program, as stacked_members gives
            constants = shared_prefix_constants(dtype, group=8, head_dim=512)
        elif "HEAD_DIM" in constants:
            constants = {**constants, "HEAD_DIM": 512, **({"GROUP": 8} if "GROUP" in constants else {})}
        elif kernel.__name__ == "_rmsnorm_kernel":
            constants = {**constants, "BLOCK": 8192, "GEMMA": True, "OFFSET": 0.0}
        elif kernel.__name__ == "_gate_up_kernel":
            constants = {**constants, "GELU": True}
        else:
            continue
        variants.append((kernel, signature, constants))
    return variants


def shared_prefix_variants(dtype: str) -> list[tuple[object, dict, dict]]:
    """The shared-prefix kernel reading four and two KV blocks a loop iteration (its ``pages``
    option); with its merge fused into the launch (arrivals counted by atomics: prefix 2,048 in
    16 splits, 16 requests a prefix), at Llama's shapes and at gpt-oss's with sinks; and with a
    group's 16 members stacked 4 a program (``members_per_program``), whose fewer registers let
    more programs share a multiprocessor."""
    fused = {"splits": 16, "pages": 2, "fused_merge": True}
    kernel, signature, _ = next(v for v in signatures(dtype) if v[0].__name__ == "_shared_prefix_kernel")
    return [(kernel, signature, shared_prefix_constants(dtype, **options))
            for options in ({"pages": 4}, fused, {"pages": 2},
                            {"pages": 2, "members_per_program": 4},  # 16 members in 4 programs
                            {**fused, "group": 8, "head_dim": 64, "sinks": True, "prefix_first": False})]


def eager_merge_variants(dtype: str) -> list[tuple[object, dict, dict]]:
    """The merge's options as bench_kernels.py's merge sweep runs them: partials kept in the
    model's dtype (``fp32_partials=False``) merged in one trip to memory (``merge_eager``), 4 rows
    a program, as a second launch and fused into the shared-prefix kernel's."""
    variants = []
    for kernel, signature, constants in signatures(dtype):
        narrow = {**signature, "parts_ptr": f"*{dtype}"}
        if kernel.__name__ == "_merge_rows_kernel" and constants["ROWS"] == 8:
            variants.append((kernel, narrow, {**constants, "ROWS": 4, "EAGER": True}))
        elif kernel.__name__ == "_shared_prefix_kernel":
            variants.append((kernel, narrow, shared_prefix_constants(dtype, splits=8, pages=2, fused_merge=True,
                                                                     merge_eager=True)))
    return variants


def fp32_only() -> list[tuple[object, dict, dict]]:
    """Kernels whose data are fp32 whatever the model's dtype: the DeltaNet decode step (its
    states), at Qwen3.5's head sizes (128 x 128)."""
    from .delta_rule import _delta_step_kernel

    f = "*fp32"
    return [(_delta_step_kernel,
             {"q_ptr": f, "k_ptr": f, "v_ptr": f, "g_ptr": f, "beta_ptr": f, "state_ptr": f, "out_ptr": f,
              "KEY_DIM": "constexpr", "VALUE_DIM": "constexpr", "BLOCK_K": "constexpr", "BLOCK_V": "constexpr"},
             {"KEY_DIM": 128, "VALUE_DIM": 128, "BLOCK_K": 128, "BLOCK_V": 32})]


def shared_prefix_registers(arch: int = 90) -> list[dict]:
    """The shared-prefix kernel's registers a thread and programs a multiprocessor over the
    settings bench_kernels.py sweeps (bf16, Llama's heads, 2 pages, 16 members a group): members
    a program x merge launched or fused x warps x stages; prints the table the README gives."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, signature, _ = next(v for v in signatures("bf16") if v[0].__name__ == "_shared_prefix_kernel")
    rows = []
    for members in (16, 8, 4):
        line = []
        for fused in (False, True):
            for warps, stages in ((4, 2), (4, 3), (2, 2), (2, 3)):  # a 2,048-token prefix in 8 splits
                constants = shared_prefix_constants("bf16", splits=8, members_per_program=members, pages=2,
                                                    fused_merge=fused)
                compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants,
                                                    attrs=aligned_attrs(kernel, signature)),
                                          target=GPUTarget("cuda", arch, 32),
                                          options={"num_warps": warps, "num_stages": stages})
                used = cubin_resources(compiled.asm["cubin"])
                programs = programs_per_multiprocessor(used["registers"], warps, compiled.metadata.shared)
                rows.append({"members": members, "fused_merge": fused, "num_warps": warps, "num_stages": stages,
                             **used, "programs": programs})
                line.append(f"{used['registers']}, spills" if used["stack_frame"] else
                            f"{used['registers']} ({programs})")
        print(f"| {members} | " + " | ".join(line) + " |", flush=True)
    return rows


def main(arch: int = 90) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET first (interpreted kernels cannot be compiled)")
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    for dtype in ("bf16", "fp32"):
        for kernel, signature, constants in signatures(dtype) + gpt_oss_variants(dtype) + gemma4_variants(dtype) + \
                shared_prefix_variants(dtype) + eager_merge_variants(dtype) + (fp32_only() if dtype == "fp32" else []):
            started = time.perf_counter()
            source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned_attrs(kernel, signature))
            compiled = triton.compile(source, target=target)
            size = len(compiled.asm.get("cubin", b""))
            if not size:
                print(f"FAILED {kernel.__name__} {dtype}: no cubin")
                return 1
            mix = load_mix(compiled.asm["ptx"])
            label = kernel.__name__ + ("+fused-merge" + ("+gpt-oss" if constants["SINKS"] else "")
                                       if constants.get("FUSED_MERGE") else
                                       "+members4" if constants.get("MEMBERS") == 4 else
                                       f"+pages{constants['PAGES']}" if constants.get("PAGES", 1) > 1 else "+gpt-oss" if any(constants.get(k) for k in ("WINDOW", "SINKS", "BIAS")) else
                                       "+gemma4" if constants.get("HEAD_DIM") == 512 or constants.get("OFFSET") == 0
                                       or constants.get("GELU")
                                       else "+gemma" if constants.get("GEMMA") else "") \
                + ("+eager" if constants.get("EAGER") or constants.get("MERGE_EAGER") else "")
            resources, warps, shared = cubin_resources(compiled.asm["cubin"]), compiled.metadata.num_warps, \
                compiled.metadata.shared
            registers = resources["registers"]
            print(f"ok {label:<32} {dtype} sm_{arch}: cubin {size:,} bytes in {time.perf_counter() - started:.1f} s, "
                  f"16-byte loads {mix['wide']}, 2-byte loads {mix['narrow']}, shared memory "
                  f"{shared:,} B, {warps} warps, {compiled.metadata.num_stages} stages, {registers} registers, "
                  f"{programs_per_multiprocessor(registers, warps, shared)} programs a multiprocessor"
                  + (f", stack frame {resources['stack_frame']:,} B (local memory: spills)" if resources["stack_frame"] else "")
                  + (f", acq_rel atomics {len(ACQ_REL.findall(compiled.asm['ptx']))}, barriers "
                     f"{len(BARRIER.findall(compiled.asm['ptx']))}" if constants.get("FUSED_MERGE") else ""))
    return 0


if __name__ == "__main__":
    # python -m kernels.compile_check [arch] [--shared-prefix-registers]
    numbers = [int(arg) for arg in sys.argv[1:] if arg.isdigit()]
    if "--shared-prefix-registers" in sys.argv:
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as main() compiles
        shared_prefix_registers(*numbers)
        sys.exit(0)
    sys.exit(main(*numbers))
