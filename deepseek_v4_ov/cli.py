"""`deepseek-v4-ov` command line: toy, export, generate, parity, demo."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deepseek_v4_ov.checkpoint.release import STORAGE_FORMATS
from deepseek_v4_ov.toys.writer import DRAFTERS


def add_toy(sub: argparse._SubParsersAction) -> None:
    from deepseek_v4_ov.toys.presets import PRESETS

    p = sub.add_parser("toy", help="write a toy checkpoint in the official release layout (random weights, or "
                                   "the trained presets `trained` and `trained-full`)")
    p.add_argument("output", type=Path)
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=STORAGE_FORMATS, default="bf16", help="storage format of the weights")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="override one config.json field of the preset (repeatable; the value is JSON when it "
                        "parses, e.g. --set n_routed_experts=256 --set 'compress_ratios=[4]', else a string)")
    p.add_argument("--drafter", choices=DRAFTERS, default=None,
                   help="the drafter layout under mtp.* (default: the preset's own): mtp (the base release's MTP "
                        "block), dspark (the -DSpark/-0731 releases' block drafter: 3 stages, block size 5, noise "
                        "token vocab_size-1, target layers the last 3 decoder layers, Markov rank 16) or none; "
                        "applied after --set")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT")
    p.set_defaults(run=run_toy)


def run_toy(args: argparse.Namespace) -> None:
    from deepseek_v4_ov.toys.presets import PRESETS, TRAINED_PRESETS

    from deepseek_v4_ov.toys.trained import check_drafter

    from deepseek_v4_ov.toys.writer import toy_config, write_toy

    start = time.perf_counter()
    if args.preset in TRAINED_PRESETS:  # every check before the first line of output
        if args.seed != 0:
            raise ValueError(f"--seed {args.seed}: the trained presets ship one set of weights (trained with seed 0)")
        if args.sets:
            raise ValueError("--set: the trained presets ship one geometry (their weights are trained for it)")
        check_drafter(args.preset, args.drafter)
    else:
        geometry = toy_config(PRESETS[args.preset], args.sets, args.drafter)
    sets = "".join(f" {item}" for item in args.sets) + (f" --drafter {args.drafter}" if args.drafter else "")
    print(f"writing toy '{args.preset}'{sets} (seed {args.seed}, {args.format}) to {args.output}")
    if args.preset in TRAINED_PRESETS:
        from deepseek_v4_ov.toys.trained import write_trained_toy

        model = write_trained_toy(args.output, args.preset, args.format, overwrite=args.overwrite,
                                  drafter=args.drafter)
    else:
        model = write_toy(args.output, geometry, args.seed, args.format, overwrite=args.overwrite)
    n_params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in args.output.glob("*.safetensors"))
    shards = len(list(args.output.glob("*.safetensors")))
    print(f"done in {time.perf_counter() - start:.1f}s: {n_params:,} parameters, {shards} shard(s), "
          f"{size / 1e6:.2f} MB of weights")


def add_export(sub: argparse._SubParsersAction) -> None:
    from deepseek_v4_ov.compress.formats import AUTO, NATIVE, RELEASE_DEFAULT, WEIGHT_FORMATS
    from deepseek_v4_ov.compress.policy import BACKUP_PRECISIONS, GROUP_SIZE_FALLBACKS, HEAD_PRECISIONS
    from deepseek_v4_ov.export.options import DRAFTERS, NO_DRAFTER

    p = sub.add_parser("export", help="export a V4 checkpoint folder to OpenVINO (options as `optimum-cli export "
                                      "openvino`)")
    p.add_argument("-m", "--model", type=Path, required=True, help="SRC: a folder in the official V4 layout")
    p.add_argument("output", type=Path, nargs="?", help="OUTPUT folder for the OpenVINO model")
    p.add_argument("--dry-run", action="store_true", help="check SRC's whole index (names, dtypes, shapes, scales) "
                                                          "and print the mapping, the drafter (none, MTP-n or "
                                                          "DSpark) and its size apart from the target's and, per "
                                                          "format and for this export, the projected IR size, "
                                                          "conversion peak and runtime memory, reading no weights "
                                                          "(with OUTPUT: also whether it fits there)")
    p.add_argument("--weight-format", default=AUTO.name,
                   help=f"one of {', '.join(WEIGHT_FORMATS)}, {NATIVE.name} (the release's FP4/FP8 codes kept as "
                        f"f4e2m1/f8e4m3 + f8e8m0) or {AUTO.name} (default: {RELEASE_DEFAULT.name} for a "
                        "release-layout FP8/FP4 source, fp32 for BF16/FP32 sources such as the toys)")
    p.add_argument("--streaming", action="store_true", help="accepted for compatibility: the IR is always built "
                                                            "piece by piece (one layer's weights at a time)")
    p.add_argument("--whole", action="store_true", help="trace the model as one piece (all weights at once; the "
                                                        "same IR, for checks)")
    p.add_argument("--group-size", type=int, help="int4/mxfp4 quantisation group (default 64 for int4, 32 for mxfp4; "
                                                  "-1 per channel)")
    p.add_argument("--sym", action="store_const", const=True, default=None,
                   help="symmetric int8/int4, no zero point (the default for int4)")
    p.add_argument("--asym", action="store_const", const=False, dest="sym",
                   help="asymmetric int4/int8, a zero point per group (the default for int8)")
    p.add_argument("--ratio", type=float, help="4-bit share of the routed-expert weights, the rest in the backup "
                                               "precision (default 1.0)")
    p.add_argument("--backup-precision", help=f"one of {', '.join(BACKUP_PRECISIONS)}: 8-bit tensors of 4-bit "
                                              "exports and the --ratio remainder (default int8_asym)")
    p.add_argument("--all-layers", action="store_true", help="4-bit also for attention/shared-expert linears "
                                                             "and embed/head")
    p.add_argument("--awq", action="store_true", help="AWQ (int4): data-aware with --dataset, else data-free")
    p.add_argument("--dataset", help="data-aware int4 (NNCF, piece by piece on the calibration samples' "
                                     "activations): 'corpus' (the trained toys' training corpus) or a .txt / "
                                     ".jsonl ({\"text\": ...} per line) file, encoded with SRC's tokenizer")
    p.add_argument("--num-samples", type=int, help="calibration windows of 256 tokens (with --dataset; default 32)")
    p.add_argument("--scale-estimation", action="store_true", help="NNCF scale estimation (int4, with --dataset)")
    p.add_argument("--head-precision", choices=HEAD_PRECISIONS,
                   help="LM head of int8/int4/mxfp4 exports: int8 per output channel (default; decode reads the "
                        "whole head every token), f16 (the release's BF16 values) or int4 (4-bit formats: the "
                        "chosen format)")
    p.add_argument("--group-size-fallback", help=f"one of {', '.join(GROUP_SIZE_FALLBACKS)} (default error)")
    p.add_argument("--prefill-only", action="store_true", help="no cache: input_ids (+ attention_mask) -> logits")
    p.add_argument("--drafter", choices=DRAFTERS, default=NO_DRAFTER,
                   help="also export a drafter for speculative decoding (`generate --mtp` / `--dspark`): mtp "
                        "(the base release's MTP block) or dspark (the -DSpark/-0731 releases' DSpark stages), as "
                        "openvino_drafter_model.xml; auto (the checkpoint's drafter, if any) or none (default: the "
                        "target IR alone, unchanged)")
    p.add_argument("--jobs", type=int, help="pieces converted at once, each in a process of its own (default: as many "
                                            "as the projected per-piece peak, the available memory and the cores "
                                            "allow; refused where N pieces' projected peak exceeds the memory)")
    p.add_argument("--disable-convert-tokenizer", action="store_true", help="do not write the OpenVINO tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from deepseek_v4_ov.export.options import ExportOptions
    from deepseek_v4_ov.export.pipeline import run

    if args.output is None and not args.dry_run:
        raise ValueError("OUTPUT is required (or pass --dry-run)")
    opts = ExportOptions(args.model, args.output or Path(), weight_format=args.weight_format,
                         group_size=args.group_size, sym=args.sym, ratio=args.ratio,
                         backup_precision=args.backup_precision, all_layers=args.all_layers, awq=args.awq,
                         group_size_fallback=args.group_size_fallback,
                         head_precision=args.head_precision, prefill_only=args.prefill_only,
                         overwrite=args.overwrite, convert_tokenizer=not args.disable_convert_tokenizer,
                         whole=args.whole, drafter=args.drafter, jobs=args.jobs, dataset=args.dataset,
                         num_samples=args.num_samples, scale_estimation=args.scale_estimation)
    if args.dry_run:
        dry_run_export(opts, args.output is not None)
    else:
        run(opts)


def dry_run_export(opts, check_output: bool) -> None:
    """`export --dry-run`: the checkpoint's table, then this export's projection (and, with OUTPUT, the
    disk check the export would make)."""
    from deepseek_v4_ov.export.plan import dry_run, size_text
    from deepseek_v4_ov.checkpoint.release import check_folder
    from deepseek_v4_ov.export.pipeline import check_cpu_memory, check_disk, projection_of, resolve

    checkpoint = check_folder(opts.src)
    opts, chosen = resolve(opts, checkpoint)  # checks the options first
    projection = projection_of(checkpoint, opts)
    print(dry_run(checkpoint).format_table())
    print(f"  this export: {projection.describe()}{chosen}")
    check_cpu_memory(projection)
    if check_output:
        check_disk(opts.output, projection)
        print(f"  fits: ~{size_text(projection.disk_bytes)} needed where {opts.output} goes")


def add_generate(sub: argparse._SubParsersAction) -> None:
    from deepseek_v4_ov.runtime.ov_lm import DEFAULT_PREFILL_CHUNK

    p = sub.add_parser("generate", help="generate text with an exported folder (plain, or speculative with its "
                                        "drafter: --mtp or --dspark)")
    p.add_argument("--model", type=Path, required=True, help="an exported folder (deepseek-v4-ov export)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (encoded with the folder's tokenizer)")
    prompt.add_argument("--prompt-ids", help="prompt token ids, separated by commas and/or spaces")
    p.add_argument("--max-new-tokens", type=int, default=64)
    spec = p.add_mutually_exclusive_group()
    spec.add_argument("--mtp", action="store_true", help="speculative decoding drafted by the MTP block (export "
                                                         "with --drafter mtp); greedy")
    spec.add_argument("--dspark", action="store_true", help="speculative decoding drafted by the DSpark drafter "
                                                            "(export with --drafter dspark); greedy")
    p.add_argument("--confidence-threshold", type=float, default=0.0,
                   help="--dspark: verify only the drafts whose confidences' running product stays at or above "
                        "this (default 0: all of the block)")
    p.add_argument("--do-sample", action="store_true", help="sample (plain decoding only; default greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the EOS token")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                   help=f"prompt tokens per call (default {DEFAULT_PREFILL_CHUNK}; 0: the whole prompt in one call)")
    p.add_argument("--device", default="CPU")
    p.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS (default 0: the plugin's choice); "
                                                          "1 is fastest for the tiny toys on a busy machine")
    p.add_argument("--json", type=Path, help="write tokens, text, ttft_s, tokens_per_s (decode only) and, when "
                                             "speculating, the drafter's acceptance to this file")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    import json

    from deepseek_v4_ov.runtime.generate import (
        Generator, Sampling, check_prompt, check_request, parse_ids, stderr_progress,
    )
    from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, check_chunk
    from deepseek_v4_ov.runtime.speculative import check_threshold

    drafter = "mtp" if args.mtp else "dspark" if args.dspark else None
    sampling = Sampling(args.do_sample, args.temperature, args.top_k, args.top_p, args.seed)
    check_request(sampling, drafter, args.max_new_tokens)
    _, vocab = Generator.check_folder(args.model, drafter)
    if args.prompt_ids is not None:
        check_prompt(parse_ids(args.prompt_ids), vocab)
    if args.json is not None and not args.json.parent.is_dir():
        raise ValueError(f"--json {args.json}: folder {args.json.parent} does not exist")
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads}: must be >= 0")
    if args.confidence_threshold and drafter != "dspark":
        raise ValueError("--confidence-threshold: only with --dspark (the DSpark drafter's confidence head)")
    check_threshold(args.confidence_threshold)
    check_chunk(args.prefill_chunk)
    gen = Generator(args.model, drafter, args.device,
                    {**F32_CONFIG, **({"INFERENCE_NUM_THREADS": args.threads} if args.threads else {})},
                    args.confidence_threshold, args.prefill_chunk)
    ids = parse_ids(args.prompt_ids) if args.prompt_ids is not None else gen.encode(args.prompt)
    stderr_progress(f"generating {args.max_new_tokens} tokens after {len(ids)} prompt tokens"
                    f"{f' ({drafter} speculative)' if drafter else ''}")
    result = gen.generate(ids, args.max_new_tokens, sampling, stop_at_eos=not args.ignore_eos,
                          progress=stderr_progress)
    has_tokenizer = (args.model / "tokenizer.json").is_file() or (args.model / "tokenizer.model").is_file()
    result.text = gen.decode(result.tokens) if has_tokenizer else None
    print(result.text if result.text is not None else " ".join(map(str, result.tokens)))
    extra = (f", {drafter} acceptance {result.stats.acceptance:.3f} ({result.stats.mean_accepted:.2f} drafts "
             f"accepted per step)" if result.stats else "")
    stderr_progress(f"{len(result.tokens)} tokens; ttft {result.ttft_s * 1e3:.1f} ms, decode "
                    f"{result.tokens_per_s:.1f} tokens/s{extra}")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def add_parity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="compare exported IRs (formats x devices) against the PyTorch port")
    p.add_argument("--model", type=Path, default=None, help="V4 folder in the official layout (any toy, random "
                   "ones included; default: the trained toy, written in the release layout to WORKDIR/trained)")
    p.add_argument("--devices", default=None,
                   help="comma-separated, e.g. CPU,GPU,NPU,STATIC-CPU (default: every device present + STATIC-CPU)")
    p.add_argument("--weight-formats", default="fp32,int8,int4",
                   help="comma-separated variants FORMAT[:OPTION...] (OPTION: gN group size, sym, asym, head-f16, "
                        "head-int8, head-int4, adjust (group size fallback), awq, corpus (data-aware on the toys' "
                        "training corpus), scale-estimation), e.g. int8,int4,int4:asym:g32,int4:corpus:awq,mxfp4,native")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-source", choices=("heldout", "random"), default="heldout",
                   help="heldout: windows of held-out Python source (deepseek_v4_ov/toys/data/heldout.txt, never trained on); "
                        "random: seeded random token ids")
    p.add_argument("--prompt-length", type=int, default=None,
                   help="tokens per prompt (default: lengths from past the window to past two ratio-128 boundaries)")
    p.add_argument("--cpu-precision", choices=("f32", "default"), default="f32",
                   help="f32: exact FP32 on CPU (default); default: the plugin's choice (bf16 where supported)")
    p.add_argument("--workdir", type=Path, default=Path("out/parity"),
                   help="where exported IRs are kept; one is reused only while its export key (the source "
                        "checkpoint's digest, the options, the package version) is this run's, else re-exported")
    p.add_argument("--report", type=Path, default=None, help="JSON report path (a .md is written beside it)")
    p.set_defaults(run=run_parity)


def run_parity(args: argparse.Namespace) -> None:
    from deepseek_v4_ov.eval import parity

    start = time.perf_counter()
    devices = args.devices.split(",") if args.devices else None
    cells, meta = parity.run(args.model, args.workdir, devices, tuple(args.weight_formats.split(",")),
                             args.prompts, args.new_tokens, args.cpu_precision,
                             prompt_source=args.prompt_source, prompt_length=args.prompt_length)
    print(parity.format_table(cells))
    report = args.report or args.workdir / "report.json"
    json_path, md_path = parity.write_reports(cells, meta, report)
    failed = sum(c.status == "failed" for c in cells)
    print(f"summary: {len(cells)} cells ({failed} failed) in {time.perf_counter() - start:.0f}s; "
          f"reports: {json_path}, {md_path}")


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the trained toy")
    p.add_argument("--workdir", type=Path, default=Path("out/demo"))
    p.set_defaults(run=lambda args: __import__("deepseek_v4_ov.demo", fromlist=["main"]).main(args.workdir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepseek-v4-ov", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_toy, add_export, add_generate, add_parity, add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileExistsError, ValueError) as err:
        print(f"deepseek-v4-ov {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
