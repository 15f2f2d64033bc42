"""The ``anytime-infer`` command: train, calibrate, trace, simulate, bench, demo, ..."""
import argparse
import json
import sys
from typing import Callable, Dict, List, Optional


def _cmd_train(args: argparse.Namespace) -> int:
    from anytime_infer.model.train import train
    card = train(args.model, args.out, epochs=args.epochs, batch=args.batch, lr=args.lr,
                 seed=args.seed, images=args.images, device=args.device)
    print('test accuracy per exit: ' + ', '.join(f'{a:.4f}' for a in card['test_accuracy']))
    print(f'wrote {args.out}/weights.pt and card.json (sha256 {card["sha256"][:12]}...)')
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser('train', help='train a multi-exit network (all exits together)',
                       description='Train a multi-exit network with a fixed seed and a '
                       'recorded train/val/test split; writes weights.pt, card.json and '
                       'split.npz into --out.')
    p.add_argument('--model', default='fashion_mnist',
                   help='data set / model name: fashion_mnist, traffic_lights, or a name '
                   'for --images (default: %(default)s)')
    p.add_argument('--images', help='an ImageFolder-style folder (class sub-folders)')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--epochs', type=int, default=None,
                   help='epochs (default: 3 for fashion_mnist, 12 otherwise)')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu', help='torch device (cpu, cuda, cuda:1, ...)')
    p.set_defaults(func=_cmd_train)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from anytime_infer.model.calibrate import calibrate, retime
    from anytime_infer.model.store import resolve_model_dir
    folder = resolve_model_dir(args.model_dir)
    batches = [int(b) for b in args.batches.split(',')]
    if args.latency_only:
        prof = retime(folder, device=args.device, batches=batches, runs=args.runs,
                      threads=args.threads)
        for k, lat in enumerate(prof['latency'], 1):
            print(f'stage {k}: p50/p95/p99 {lat["1"]["p50_ms"]:.3f}/{lat["1"]["p95_ms"]:.3f}/'
                  f'{lat["1"]["p99_ms"]:.3f} ms (batch 1, {prof["device"]}, '
                  f'{prof["threads"]} thread(s))')
        print(f'wrote the latencies into {folder}/profile.json')
        return 0
    prof = calibrate(folder, device=args.device, batches=batches, runs=args.runs,
                     threads=args.threads)
    for k, (lat, acc, e0, e1) in enumerate(zip(prof['latency'], prof['exit_accuracy'],
                                               prof['ece_before'], prof['ece_after']), 1):
        print(f'exit {k}: val acc {acc:.4f}  T={prof["temperature"][k - 1]:.3f}  '
              f'ECE {e0:.4f} -> {e1:.4f}  stage p50/p95/p99 {lat["1"]["p50_ms"]:.3f}/'
              f'{lat["1"]["p95_ms"]:.3f}/{lat["1"]["p99_ms"]:.3f} ms (batch 1, '
              f'{prof["device"]})')
    print(f'wrote {folder}/profile.json')
    return 0


def _add_calibrate(sub) -> None:
    p = sub.add_parser('calibrate', help='measure stage latencies and calibrate exits',
                       description='Measure every stage latency per batch size on the '
                       'device in use and calibrate every exit on the validation split '
                       '(temperature scaling, ECE, conditional accuracy tables); writes '
                       'profile.json beside the weights.')
    p.add_argument('--model-dir', '--model', dest='model_dir', default='fashion_mnist',
                   help='bundled model name or model folder (default: %(default)s)')
    p.add_argument('--device', default='cpu', help='torch device (default: %(default)s)')
    p.add_argument('--batches', default='1,2,4,8', help='batch sizes to time')
    p.add_argument('--runs', type=int, default=200, help='timed runs per stage and batch')
    p.add_argument('--threads', type=int, default=1,
                   help='torch CPU threads while timing, as the node parameter torch_threads '
                   '(default: %(default)s; 0: the torch default)')
    p.add_argument('--latency-only', action='store_true',
                   help='only time the stages again (temperatures and tables kept)')
    p.set_defaults(func=_cmd_calibrate)


def _cmd_trace(args: argparse.Namespace) -> int:
    from anytime_infer.model.traces import make_trace
    n = make_trace(args.model, args.out, device=args.device, split=args.split)
    print(f'wrote {args.out}: {n} samples of the {args.split} split')
    return 0


def _add_trace(sub) -> None:
    p = sub.add_parser('trace', help='write per-exit predictions of the test split (CSV)',
                       description='For every test image and every exit write one CSV row '
                       'sample,label,exit,predicted,confidence (exit from 1, confidence the '
                       'calibrated probability of predicted). The simulator reads it.')
    p.add_argument('--model', default='fashion_mnist', help='bundled name or model folder')
    p.add_argument('--out', required=True, help='CSV file to write (.csv or .csv.gz)')
    p.add_argument('--split', default='test', choices=['test', 'val'])
    p.add_argument('--device', default='cpu')
    p.set_defaults(func=_cmd_trace)


def _need_stage_ms(args: argparse.Namespace) -> None:
    if not args.stage_ms:
        raise ValueError('--trace needs --stage-ms a,b,c,... (mean stage latencies)')


def _source(args: argparse.Namespace):
    from anytime_infer.evaluation import bundled_source, trace_source
    if args.trace:
        _need_stage_ms(args)
        return trace_source(args.trace, [float(x) for x in args.stage_ms.split(',')],
                            seed=args.seed)
    return bundled_source(args.model)


def _floats(text: Optional[str]) -> Optional[List[float]]:
    return [float(x) for x in text.split(',')] if text else None


def _cmd_simulate(args: argparse.Namespace) -> int:
    from anytime_infer.evaluation import run_policy
    src = _source(args)
    if args.policy == 'fixed_depth' and args.depth is None:
        raise ValueError('--policy fixed_depth needs --depth K')
    out = run_policy(src, args.policy, args.load, depth=args.depth, cameras=args.cameras,
                     deadline_periods=args.deadline_periods, frames=args.frames,
                     seed=args.seed, arrival=args.arrival, percentile=args.percentile,
                     adapt=not args.no_adapt, batching=not args.no_batching,
                     charge_decisions=not args.no_charge_decisions,
                     weights=_floats(args.weights), rate_ratios=_floats(args.rate_ratios),
                     planner=args.planner, decision_clock=args.decision_clock)
    if args.json:
        print_json(out)
    else:
        print(f'{out["policy"]} on {out["model"]} at {args.load}x load, {out["frames"]} '
              f'frames from {args.cameras} cameras ({args.arrival}):')
        print(f'  accuracy {out["accuracy"]:.4f}  miss {100 * out["miss_rate"]:.2f}%  '
              f'drop {100 * out["drop_rate"]:.2f}% {out["drops_by_reason"]}  '
              f'mean depth {out["mean_depth"]:.2f}')
        print(f'  decision p50 {out["decision_ms_p50"]:.3f} ms (mean stage '
              f'{out["mean_stage_ms"]:.3f} ms)  latency p50/p99 {out["latency_ms_p50"]} / '
              f'{out["latency_ms_p99"]} ms')
    return 0


def _add_simulate(sub) -> None:
    from anytime_infer.scheduler.policies import POLICY_NAMES
    p = sub.add_parser('simulate', help='run one policy on a trace in the simulator',
                       description='Discrete-event simulation of camera frames under one '
                       'policy: stage times drawn from the calibrated distribution, exit '
                       "outcomes from a trace, the policy's decision time charged.")
    p.add_argument('--policy', default='imprecise_dp', choices=POLICY_NAMES)
    p.add_argument('--depth', type=int, help='depth for --policy fixed_depth')
    p.add_argument('--model', default='fashion_mnist',
                   help='bundled model (its trace and profile); default %(default)s')
    p.add_argument('--trace', help='a trace CSV from elsewhere (needs --stage-ms)')
    p.add_argument('--stage-ms', help='mean stage latencies in ms, comma-separated')
    p.add_argument('--load', type=float, default=1.0,
                   help='demand as a multiple of the full-depth capacity')
    p.add_argument('--cameras', type=int, default=4)
    p.add_argument('--deadline-periods', type=float, default=2.0,
                   help='relative deadline in frame periods')
    p.add_argument('--frames', type=int, default=3000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--arrival', default='periodic', choices=['periodic', 'poisson', 'burst'])
    p.add_argument('--percentile', type=int, default=95, choices=[50, 95, 99],
                   help='stage-time percentile plans use')
    p.add_argument('--no-adapt', action='store_true', help='do not update stage times')
    p.add_argument('--no-batching', action='store_true',
                   help='never batch a stage of several tasks (DP policies batch by default '
                   'where the calibrated batch latency is cheaper)')
    p.add_argument('--no-charge-decisions', action='store_true',
                   help="do not charge the policy's own decision time to the worker")
    p.add_argument('--planner', default='auto', choices=['auto', 'thread', 'inline'],
                   help='DP policies: plan on a planner thread while stages run, the worker '
                   'looks the plan up at each boundary (thread), or decide at the boundary '
                   '(inline, one core); auto: thread where one inline decision, measured '
                   'here, costs 0.1 of a mean stage or more; every policy is charged what its '
                   'worker waits for')
    p.add_argument('--decision-clock', default='cpu', choices=['cpu', 'wall'],
                   help='time decisions by the thread CPU time (a core of its own; default) '
                   'or by wall time (a shared machine preempts them)')
    p.add_argument('--weights', help='per-camera weights, comma-separated')
    p.add_argument('--rate-ratios', help='per-camera relative frame rates, comma-separated')
    p.add_argument('--json', action='store_true', help='print one JSON object')
    p.set_defaults(func=_cmd_simulate)


def _cmd_bound(args: argparse.Namespace) -> int:
    from anytime_infer.scheduler.bounds import all_bounds, bound_table
    from anytime_infer.scheduler.traces import read_trace
    if args.trace:
        _need_stage_ms(args)
        trace, name = read_trace(args.trace), args.trace
    else:
        from anytime_infer.evaluation import bundled_source
        src = bundled_source(args.model)
        trace, name = src.trace, args.model
    stage_s = [x / 1000.0 for x in _floats(args.stage_ms)] if args.stage_ms else \
        [src.profile.stage_mean(k) for k in range(1, src.profile.num_stages + 1)]
    bounds = all_bounds(trace, stage_s, _floats(args.loads), bins=args.bins)
    if args.json:
        print_json({f'{load:g}': {k: vars(b) for k, b in r.items()}
                    for load, r in bounds.items()})
        return 0
    print(f'{name}: budget bounds, stage times {[round(1000 * x, 4) for x in stage_s]} ms, '
          f'{len(trace.samples)} frames, deadlines relaxed to the mean budget, tables fitted '
          'on the trace itself')
    print(bound_table(bounds))
    return 0


def _add_bound(sub) -> None:
    from anytime_infer.scheduler.bounds import MIN_GROUP
    p = sub.add_parser('bound', help="what a policy that knows the exits' confidences can "
                       'reach, against the clairvoyant oracle (budget bounds on a trace)',
                       description='Relax every deadline to the mean time per frame at a '
                       'load and compute, on the trace, the best accuracy of a policy that '
                       "knows (a) which exits are correct (oracle), (b) the latest exit's "
                       "confidence bin (what imprecise_dp plans on), (c) all exits' bins so "
                       'far. (b) and (c) are optimistic: their tables are fitted on the '
                       'frames they are judged on.')
    p.add_argument('--model', default='fashion_mnist',
                   help='bundled model (its test trace and stage times); default %(default)s')
    p.add_argument('--trace', help='a trace CSV from elsewhere (needs --stage-ms)')
    p.add_argument('--stage-ms', help='mean stage latencies in ms, comma-separated (default: '
                   "the bundled model's profile)")
    p.add_argument('--loads', default='1,2,3', help='loads, comma-separated (%(default)s)')
    p.add_argument('--bins', type=int, default=10,
                   help='confidence bins per exit (%(default)s); a history group is '
                   f'split by an exit only into parts of >= {MIN_GROUP} frames')
    p.add_argument('--json', action='store_true', help='print one JSON object')
    p.set_defaults(func=_cmd_bound)


def _planner_scale(model: str, out: str, runs: int) -> None:
    """Print (and write) the off-path planner's scale benchmark for one model."""
    import os
    from anytime_infer.evaluation import bundled_source
    from anytime_infer.scheduler.bench_planner import scale_benchmark, scale_table
    rows = scale_benchmark(bundled_source(model).profile, runs=runs)
    print(f'\n## {model}: one stage boundary and its plan, by pending tasks '
          f'(thread CPU time, {runs} runs each)\n')
    print(scale_table(rows))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f'{model}_planner_scale.json'), 'w') as f:
        json.dump(rows, f, indent=1)


def _cmd_bench(args: argparse.Namespace) -> int:
    import os
    from anytime_infer.evaluation import (ablations, bundled_source, LOADS, markdown_table,
                                          sweep, write_bench)
    from tqdm import tqdm
    if args.planner_scale:
        for model in args.models.split(','):
            _planner_scale(model, args.out, args.scale_runs)
        return 0
    if args.policy_table:
        from anytime_infer.policy_table import bundled_cases, policy_markdown, policy_rows, \
            trace_case
        if args.trace:
            _need_stage_ms(args)
            cases = [trace_case(args.trace, _floats(args.stage_ms), seed=args.seed)]
        else:
            cases = bundled_cases(args.models.split(','))
        rows = policy_rows(cases, _floats(args.loads) or [1.0, 2.0, 3.0],
                           frames=args.frames, seed=args.seed,
                           progress=lambda r: print(f'{r["case"]} {r["load"]:g}x done',
                                                    file=sys.stderr))
        print(policy_markdown(rows))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, 'policy_table.json'), 'w') as f:
            json.dump(rows, f, indent=1)
        return 0
    loads = _floats(args.loads) or list(LOADS)
    for model in args.models.split(','):
        _planner_scale(model, args.out, args.scale_runs)
        src = bundled_source(model)
        from anytime_infer.evaluation import bench_policies
        total = len(loads) * len(bench_policies(src.profile.num_stages))
        with tqdm(total=total, desc=f'bench {model}', unit='run') as bar:
            rows = sweep(src, loads, frames=args.frames, seed=args.seed,
                         progress=lambda r: bar.update(1))
        files = write_bench(rows, args.out, model, loads)
        print(f'\n## {model}: accuracy over all frames (deadline-miss rate), '
              f'{args.frames} frames, 4 cameras, deadline 2 periods\n')
        print(markdown_table(rows, loads))
        dec = [r for r in rows if r['label'] == 'imprecise_dp']
        print(f'\nimprecise_dp decision p50 {max(r["decision_ms_p50"] for r in dec):.3f} ms '
              f'(worst load), mean stage {dec[0]["mean_stage_ms"]:.3f} ms')
        from anytime_infer.evaluation import decision_benchmark
        db = decision_benchmark(src)
        for key in ('default_horizon', 'full_horizon'):
            d = db[key]
            print(f'one decision, {db["tasks"]} pending tasks, horizon {d["horizon"]}: p50 '
                  f'{d["decision_ms_p50"]:.3f} ms = {d["ratio_to_mean_stage"]:.2f} x the mean '
                  f'stage ({db["mean_stage_ms"]:.3f} ms)')
        with open(os.path.join(args.out, f'{model}_decision.json'), 'w') as f:
            json.dump(db, f, indent=1)
        if not args.no_ablations:
            ab = ablations(src, load=max(loads), frames=args.frames, seed=args.seed)
            path = os.path.join(args.out, f'{model}_ablations.json')
            with open(path, 'w') as f:
                json.dump(ab, f, indent=1)
            files.append(path)
            print(f'\nbeyond the paper, at {max(loads)}x:')
            for r in ab:
                extra = (' per stream ' + ','.join(f'{a:.3f}' for a in r['accuracy_by_stream'])
                         if 'accuracy_by_stream' in r else '')
                print(f'  {r["label"]:<42} acc {r["accuracy"]:.3f}  miss '
                      f'{100 * r["miss_rate"]:.2f}%  drop {100 * r["drop_rate"]:.1f}%{extra}')
        print('wrote ' + ', '.join(files))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser('bench', help='sweep load 0.5x-3x for every policy (CSV/JSON/MD/PNG)')
    p.add_argument('--models', default='fashion_mnist,traffic_lights')
    p.add_argument('--loads', help='comma-separated loads (default 0.5,1,...,3)')
    p.add_argument('--frames', type=int, default=2000)
    p.add_argument('--seed', type=int, default=11)
    p.add_argument('--out', default='bench', help='output folder')
    p.add_argument('--no-ablations', action='store_true')
    p.add_argument('--planner-scale', action='store_true',
                   help='only the planner scale benchmark: boundary lookup and planning time '
                   'for 8/32/128/256 pending tasks (also part of the full bench)')
    p.add_argument('--policy-table', action='store_true',
                   help='only which policy wins where: imprecise_dp (planner thread and '
                   'inline), free, greedy, best static, oracle at loads 1-3x (or --loads), '
                   'CPU and fast-accelerator stage times, one interleaved run')
    p.add_argument('--trace', help='--policy-table on a trace of another model (CSV, see '
                   '"Trace format"), instead of the bundled models; needs --stage-ms')
    p.add_argument('--stage-ms', help='with --trace: its mean stage latencies in ms on your '
                   'device, comma-separated')
    p.add_argument('--scale-runs', type=int, default=200,
                   help='runs per size of the planner scale benchmark')
    p.set_defaults(func=_cmd_bench)


def _cmd_demo(args: argparse.Namespace) -> int:
    from anytime_infer.demo import run_demo
    return run_demo(args.model, args.rate, args.seconds, args.policy, args.deadline_ms)


def _add_demo(sub) -> None:
    p = sub.add_parser('demo', help='play the bundled sample frames on two cameras through '
                       'the node and report', description='Starts anytime_infer_node with '
                       'config/anytime_infer.yaml as a separate process, publishes the '
                       'bundled sample frames on camera_front/image_raw and '
                       'camera_rear/image_raw, shows a live progress line and ends with a '
                       'report (frames, outcomes, accuracy, depth, latency).')
    p.add_argument('--model', default='fashion_mnist')
    p.add_argument('--rate', type=float, default=30.0, help='frames per second per camera')
    p.add_argument('--seconds', type=float, default=20.0)
    p.add_argument('--policy', default='imprecise_dp')
    p.add_argument('--deadline-ms', type=float, default=40.0)
    p.set_defaults(func=_cmd_demo)


def _cmd_export_samples(args: argparse.Namespace) -> int:
    from anytime_infer.demo import export_samples
    print('wrote ' + export_samples(args.model, args.count, args.seed))
    return 0


def _add_export_samples(sub) -> None:
    p = sub.add_parser('export-samples', help='bundle sample frames of the test split for '
                       'the demo and the tests')
    p.add_argument('--model', default='fashion_mnist')
    p.add_argument('--count', type=int, default=500)
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=_cmd_export_samples)


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from anytime_infer.bench_model import bench_model, model_table
    if args.table:
        print(model_table(args.models.split(',')))
        return 0
    print(bench_model(args.models.split(','), args.device, runs=args.runs))
    return 0


def _add_bench_model(sub) -> None:
    p = sub.add_parser('bench-model', help='per-stage latency / throughput per batch size '
                       'and peak memory of the bundled models')
    p.add_argument('--models', default='fashion_mnist,traffic_lights')
    p.add_argument('--device', default='auto')
    p.add_argument('--runs', type=int, default=100)
    p.add_argument('--table', action='store_true',
                   help='print the README table from the bundled cards and profiles')
    p.set_defaults(func=_cmd_bench_model)


def _cmd_bench_node(args: argparse.Namespace) -> int:
    from anytime_infer.demo import bench_node
    print(bench_node(args.model, [float(r) for r in args.rates.split(',')], args.seconds,
                     reliability=args.qos, planner=args.planner))
    return 0


def _add_bench_node(sub) -> None:
    p = sub.add_parser('bench-node', help='two 1280x720 rgb8 cameras through the real node '
                       'at rising rates: transport losses, latency, conversion time')
    p.add_argument('--model', default='fashion_mnist')
    p.add_argument('--rates', default='5,10,15,20,30', help='Hz per camera')
    p.add_argument('--seconds', type=float, default=6.0)
    p.add_argument('--qos', default='reliable', choices=['reliable', 'best_effort'],
                   help='image QoS of camera and node (best_effort loses large frames on '
                   'Fast DDS here; see README)')
    p.add_argument('--planner', default='auto', choices=['auto', 'thread', 'inline'],
                   help='where imprecise_dp plans (the node parameter planner)')
    p.set_defaults(func=_cmd_bench_node)


def _cmd_bench_executor(args: argparse.Namespace) -> int:
    from anytime_infer.faults import bench_executor
    bench_executor([float(x) for x in args.loads.split(',')], args.planners.split(','),
                   args.seconds, args.rounds, args.deadline_ms / 1000.0)
    return 0


def _add_bench_executor(sub) -> None:
    p = sub.add_parser('bench-executor', help='the worker in-process (fashion_mnist, CPU): '
                       'its overhead per stage and share of busy time at each load, planner '
                       'inline vs thread side by side')
    p.add_argument('--loads', default='1,2', help='x the full-depth capacity, comma-separated')
    p.add_argument('--planners', default='inline,thread')
    p.add_argument('--seconds', type=float, default=5.0, help='per run')
    p.add_argument('--rounds', type=int, default=1, help='repeat the interleaved runs')
    p.add_argument('--deadline-ms', type=float, default=50.0)
    p.set_defaults(func=_cmd_bench_executor)


def _cmd_make_bag(args: argparse.Namespace) -> int:
    from anytime_infer.replay import make_bag
    info = make_bag(args.out, args.model, args.images, args.storage, args.compressed,
                    args.cameras, args.rate, args.frames, seed=args.seed)
    print(f'wrote {info["bag"]}: {info["cameras"]} cameras x {info["frames_per_camera"]} '
          f'frames at {info["rate_hz"]} Hz ({info["storage"]}'
          f'{", compressed" if info["compressed"] else ""}) with ground truth')
    return 0


def _add_make_bag(sub) -> None:
    p = sub.add_parser('make-bag', help='write a rosbag2 bag of labelled camera frames',
                       description='Camera topics /camera_<i>/image_raw (or .../compressed) '
                       'from a labelled test split, with /camera_<i>/ground_truth '
                       '(DetectionArray, same header stamp).')
    p.add_argument('--out', required=True, help='bag folder to create')
    p.add_argument('--model', default='fashion_mnist', help='bundled model: its test samples')
    p.add_argument('--images', help='an ImageFolder instead (its test split)')
    p.add_argument('--storage', default='mcap', choices=['mcap', 'sqlite3'])
    p.add_argument('--compressed', action='store_true', help='CompressedImage (png)')
    p.add_argument('--cameras', type=int, default=2)
    p.add_argument('--rate', type=float, default=10.0, help='Hz per camera')
    p.add_argument('--frames', type=int, default=100, help='frames per camera')
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=_cmd_make_bag)


def _cmd_replay(args: argparse.Namespace) -> int:
    from anytime_infer.replay import report_markdown, replay
    from tqdm import tqdm
    bar = tqdm(desc='replay', unit='frame')

    def progress(k, n):
        bar.total = n
        bar.update(k - bar.n)
    status, reps = replay(args.bag, args.out, args.model, args.policy,
                          args.compare.split(',') if args.compare else None,
                          args.topics.split(',') if args.topics else None, args.rate,
                          args.deterministic, args.deadline_ms, args.seed, progress)
    bar.close()
    if 'total' in reps[0]:
        print(report_markdown(reps))
    where = f'{args.out}/<policy>/' if args.compare else f'{args.out}/'
    print(f'wrote {where}report.json, report.md, frames.csv.gz, replay.png, detections.mcap'
          + (f' and {args.out}/compare.md' if args.compare else ''))
    return status


def _add_replay(sub) -> None:
    p = sub.add_parser('replay', help='play a bag through the node (or deterministically) '
                       'and score it', description='Image topics are found by type (or '
                       '--topics); writes DIR/report.json, DIR/report.md, DIR/frames.csv.gz, '
                       'plots and DIR/detections.mcap (what the node published, or with '
                       '--deterministic what it would publish). Exit status 2: unreadable '
                       'bag; 3: the report is incomplete (a fault part-way).')
    p.add_argument('bag')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--model', default='fashion_mnist')
    p.add_argument('--policy', default='imprecise_dp')
    p.add_argument('--compare', help='comma-separated policies: one replay each, side by side')
    p.add_argument('--topics', help='comma-separated image topics (default: all by type)')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    p.add_argument('--deadline-ms', type=float, default=100.0)
    p.add_argument('--deterministic', action='store_true',
                   help='no DDS, no wall clock: stage times from the profile (seeded)')
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=_cmd_replay)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from anytime_infer.replay.fleet import evaluate, FleetConfig
    from anytime_infer.replay.fleet_report import summary_markdown
    policies = args.compare.split(',') if args.compare else [args.policy]
    cfg = FleetConfig(model=args.model, policies=policies, compare=bool(args.compare),
                      deadline_ms=args.deadline_ms, seed=args.seed, rate=args.rate,
                      deterministic=not args.dds,
                      topics=args.topics.split(',') if args.topics else None,
                      threads=args.threads)
    workers = 0 if args.sequential else args.workers
    status, summary, info = evaluate(args.bags, args.out, cfg, workers, args.address,
                                     args.force, progress=not args.no_progress)
    md = summary_markdown(summary)
    print(md[:md.index('## Bags, worst first')].rstrip())
    print(f'\n{info.engine}: {len(info.evaluated)} bags evaluated, {len(info.skipped)} '
          f'skipped (done before), {len(info.failed)} failed, {info.wall_s:.1f} s; wrote '
          f'{args.out}/summary.json, summary.md, fleet.png, run.json and one folder per bag')
    return status


def _add_evaluate(sub) -> None:
    p = sub.add_parser('evaluate', help='evaluate every bag under folders (Ray, '
                       'deterministic) into per-bag reports and a fleet summary',
                       description='Finds every rosbag2 bag under BAG_OR_FOLDER (bag '
                       'folders with metadata.yaml and loose .mcap files), replays each as '
                       '`replay --deterministic` does into DIR/<bag>/, one Ray task per bag, '
                       'and writes DIR/summary.json, summary.md and fleet.png. Bags already '
                       'done with the same settings are skipped (--force redoes them). Exit '
                       'status 3 when any bag failed, 2 when no bag was found.')
    p.add_argument('bags', nargs='+', metavar='BAG_OR_FOLDER')
    p.add_argument('--out', required=True, help='output folder (DIR)')
    p.add_argument('--model', default='fashion_mnist')
    p.add_argument('--policy', default='imprecise_dp')
    p.add_argument('--compare', help='comma-separated policies, tabulated over the fleet')
    p.add_argument('--deadline-ms', type=float, default=100.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    p.add_argument('--topics', help='comma-separated image topics (default: all by type)')
    p.add_argument('--workers', type=int, default=None,
                   help='local Ray workers (default: cores / --threads); 0: no Ray, '
                   'one bag after the other in this process')
    p.add_argument('--sequential', action='store_true', help='same as --workers 0')
    p.add_argument('--threads', type=int, default=1, help='torch threads per bag task')
    p.add_argument('--address', help='join this Ray cluster (e.g. HEAD:6379, or auto) '
                   'instead of starting a local one')
    p.add_argument('--force', action='store_true', help='redo bags already done')
    p.add_argument('--dds', action='store_true',
                   help='replay through the node over DDS instead (needs --sequential)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=_cmd_evaluate)


def _cmd_soak(args: argparse.Namespace) -> int:
    from anytime_infer.soak import main, SoakConfig
    duration = args.duration if args.duration is not None else 60.0 * args.minutes
    return main(SoakConfig(cameras=args.cameras, load=args.load, duration_s=duration,
                           interval_s=args.interval, out=args.out, model=args.model,
                           qos=args.qos))


def _add_soak(sub) -> None:
    p = sub.add_parser('soak', help='drive the real node at an overload for minutes and '
                       'sample its memory, descriptors, threads and counters',
                       description='Starts anytime_infer_node with config/anytime_infer.yaml, '
                       'derives the frame rate from the capacity the node measures (load / '
                       'full-depth time), plays frames on --cameras topics for the chosen '
                       'time, samples /proc/<pid> and ~/status every --interval seconds and '
                       'writes OUT/soak.json, soak.md and soak.png; prints PASS/FAIL per '
                       'target (exit status 1 when one fails).')
    p.add_argument('--cameras', type=int, default=2)
    p.add_argument('--load', type=float, default=3.0,
                   help='frame rate as a multiple of the full-depth capacity')
    p.add_argument('--minutes', type=float, default=10.0)
    p.add_argument('--duration', type=float, help='seconds (instead of --minutes)')
    p.add_argument('--interval', type=float, default=10.0, help='seconds between samples')
    p.add_argument('--out', default='soak', help='output folder')
    p.add_argument('--model', default='fashion_mnist')
    p.add_argument('--qos', default='best_effort', choices=['best_effort', 'reliable'],
                   help='image QoS of cameras and node (default: the shipped config)')
    p.set_defaults(func=_cmd_soak)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog='anytime-infer',
        description='Anytime multi-exit inference under an imprecise-computation scheduler.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for add in ADDERS:
        add(sub)
    return parser


ADDERS: List[Callable] = [_add_train, _add_calibrate, _add_trace, _add_simulate, _add_bound,
                          _add_bench, _add_bench_model, _add_bench_node,
                          _add_bench_executor, _add_demo,
                          _add_export_samples, _add_make_bag, _add_replay, _add_evaluate,
                          _add_soak]


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``anytime-infer`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, 'epochs', 0) is None:
        args.epochs = 3 if args.model == 'fashion_mnist' and not args.images else 12
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f'anytime-infer {args.command}: error: {e}', file=sys.stderr)
        return 2


def _json_default(o) -> Dict:
    return str(o)


def print_json(data: Dict) -> None:
    """Print one JSON object on one line."""
    print(json.dumps(data, default=_json_default, sort_keys=True))


if __name__ == '__main__':
    sys.exit(main())
