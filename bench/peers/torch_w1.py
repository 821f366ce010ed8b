#!/usr/bin/python3
"""W1 benchmark workload in PyTorch on the CPU (peer runner for `npm run bench:peers`).

Run with Debian's Python (python3-torch 1.13.1, numpy 1.24, OpenBLAS via alternatives):

  /usr/bin/python3 bench/peers/torch_w1.py --threads 1|2 --variant lora|lora-fa \
      --optimizer sgd|adamw --data <file.safetensors> --steps 12 --warmup 2
  /usr/bin/python3 bench/peers/torch_w1.py --sgemm --threads 1|2 --n 512 --d 768

W1 (see bench/peers/w1-data.ts): h = x; per layer y = h·W + s·(h·A)·B with W frozen
([in, out] layout), s = alpha/r; GELU (tanh) between layers, not after the last;
loss = mean((h − target)²). LoRA trains A and B; LoRA-FA trains only B.

Threads are fixed by environment variables set BEFORE torch/numpy are imported
(OMP_NUM_THREADS for torch's OpenMP pool and element-wise ops, OPENBLAS_NUM_THREADS for
OpenBLAS's own pthread pool that runs sgemm, MKL_NUM_THREADS for completeness), plus
torch.set_num_threads(t) so the intra-op pool agrees.

Human-readable lines go to stderr; the last stdout line is one JSON object.
"""
import argparse
import json
import os
import re
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--variant', choices=['lora', 'lora-fa'], default='lora')
    p.add_argument('--optimizer', choices=['sgd', 'adamw'], default='sgd')
    p.add_argument('--data', type=str)
    p.add_argument('--steps', type=int, default=12)
    p.add_argument('--warmup', type=int, default=2)
    # The harness passes W1_HYPER (bench/peers/w1-data.ts) so every system trains alike.
    p.add_argument('--sgd-lr', type=float, default=50.0)
    p.add_argument('--adamw-lr', type=float, default=1e-3)
    p.add_argument('--weight-decay', type=float, default=0.01)
    p.add_argument('--sgemm', action='store_true', help='measure float32 [n,d]·[d,d] GFLOP/s (numpy and torch)')
    p.add_argument('--n', type=int, default=512)
    p.add_argument('--d', type=int, default=768)
    p.add_argument('--intraop', type=int, default=None,
                   help="torch intra-op (OpenMP) threads; default = --threads (OpenBLAS always gets --threads)")
    p.add_argument('--reps', type=int, default=30, help='sgemm repetitions (>= 20)')
    return p.parse_args()


ARGS = parse_args()
T = ARGS.threads
# Must happen before numpy / torch load OpenBLAS / libgomp.
INTRAOP = ARGS.intraop if ARGS.intraop is not None else T
os.environ['OPENBLAS_NUM_THREADS'] = str(T)
os.environ['MKL_NUM_THREADS'] = str(T)
os.environ['OMP_NUM_THREADS'] = str(INTRAOP)
# libgomp's workers spin after each parallel region by default, stealing the cores OpenBLAS's own
# pthreads need for the next sgemm (measured: 2 threads 3-4x slower than 1 without this).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import time  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(INTRAOP)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loaded_blas():
    """The BLAS / threading shared objects actually mapped into this process."""
    libs = set()
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and re.search(r'blas|lapack|mkl|dnnl|gomp|iomp|blis', parts[-1]):
                    libs.add(os.path.basename(parts[-1]))
    except OSError:
        pass
    return sorted(libs)


def blas_desc():
    libs = loaded_blas()
    ob = [l for l in libs if 'openblas' in l]
    desc = ob[0] if ob else ','.join(libs) or 'unknown'
    extra = []
    if 'OPENBLAS_CORETYPE' in os.environ:
        extra.append('OPENBLAS_CORETYPE=' + os.environ['OPENBLAS_CORETYPE'])
    return desc + (' (' + ', '.join(extra) + ')' if extra else '')


def versions():
    return {'torch': torch.__version__, 'numpy': np.__version__, 'blas': blas_desc(),
            'python': sys.version.split()[0]}


# ---------------------------------------------------------------- safetensors
def read_safetensors(path):
    with open(path, 'rb') as f:
        buf = f.read()
    hlen = int.from_bytes(buf[:8], 'little')
    header = json.loads(buf[8:8 + hlen].decode('utf-8'))
    base = 8 + hlen
    meta = header.pop('__metadata__', {})
    out = {}
    for name, info in header.items():
        if info['dtype'] != 'F32':
            raise ValueError(f'{name}: dtype {info["dtype"]} (only F32 supported)')
        s, e = info['data_offsets']
        arr = np.frombuffer(buf, dtype='<f4', count=(e - s) // 4, offset=base + s).reshape(info['shape'])
        out[name] = arr.copy()  # own, aligned, writable
    return out, meta


# ---------------------------------------------------------------- sgemm
def sgemm(n, d, reps):
    reps = max(reps, 20)
    flops = 2.0 * n * d * d
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, d), dtype=np.float32)
    b = rng.standard_normal((d, d), dtype=np.float32)
    c = np.empty((n, d), dtype=np.float32)

    def bench(fn):
        for _ in range(5):
            fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        med = statistics.median(ts)
        return flops / med / 1e9, med

    np_g, np_t = bench(lambda: np.matmul(a, b, out=c))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tc = torch.empty(n, d)
    with torch.no_grad():
        th_g, th_t = bench(lambda: torch.mm(ta, tb, out=tc))
    log(f'sgemm [{n},{d}]x[{d},{d}] threads={T}: numpy {np_g:.1f} GFLOP/s ({np_t*1e3:.3f} ms), '
        f'torch {th_g:.1f} GFLOP/s ({th_t*1e3:.3f} ms), median of {reps}; blas={blas_desc()}')
    return {'system': 'sgemm', 'threads': T, 'numpy_gflops': round(np_g, 3), 'torch_gflops': round(th_g, 3),
            'shape': [n, d, d], 'reps': reps, 'numpy_ms': np_t * 1e3, 'torch_ms': th_t * 1e3,
            'torch_num_threads': torch.get_num_threads(), 'omp_wait_policy': os.environ['OMP_WAIT_POLICY'], 'versions': versions()}


# ---------------------------------------------------------------- W1
def gelu_tanh(y):
    try:
        return torch.nn.functional.gelu(y, approximate='tanh')
    except TypeError:  # torch < 1.12
        return 0.5 * y * (1.0 + torch.tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))


def run_w1():
    tensors, meta = read_safetensors(ARGS.data)
    layers = sorted({int(m.group(1)) for k in tensors for m in [re.match(r'layers\.(\d+)\.', k)] if m})
    x = torch.from_numpy(tensors['x'])
    target = torch.from_numpy(tensors['target'])
    n, d = x.shape
    W = [torch.from_numpy(tensors[f'layers.{i}.fc.weight']) for i in layers]  # frozen, requires_grad False
    A = [torch.from_numpy(tensors[f'layers.{i}.fc.lora_A']).clone() for i in layers]
    B = [torch.from_numpy(tensors[f'layers.{i}.fc.lora_B']).clone() for i in layers]
    r = A[0].shape[1]
    alpha = 16.0
    s = alpha / r
    train_a = ARGS.variant == 'lora'
    for a in A:
        a.requires_grad_(train_a)
    for b in B:
        b.requires_grad_(True)
    params = (A if train_a else []) + B
    if ARGS.optimizer == 'sgd':
        opt = torch.optim.SGD(params, lr=ARGS.sgd_lr)
    else:
        opt = torch.optim.AdamW(params, lr=ARGS.adamw_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=ARGS.weight_decay)
    log(f'W1 n={n} d={d} r={r} layers={len(layers)} s={s} variant={ARGS.variant} optimizer={ARGS.optimizer} '
        f'threads={T} (torch.get_num_threads()={torch.get_num_threads()}) blas={blas_desc()}')

    # Identify leaf parameters / inputs (by storage pointer) to separate them from activations.
    leaf_ptrs = {t.storage().data_ptr() for t in [x, target] + W + A + B}

    def forward():
        h = x
        L = len(W)
        for i in range(L):
            y = h @ W[i] + s * ((h @ A[i]) @ B[i])
            h = gelu_tanh(y) if i < L - 1 else y
        return torch.mean((h - target) ** 2)

    saved = {}

    def pack(t):
        try:
            st = t.storage()
            ptr = st.data_ptr()
            if ptr not in saved:
                saved[ptr] = st.nbytes()
        except Exception:
            pass
        return t

    def unpack(t):
        return t

    def step(measure=False):
        opt.zero_grad(set_to_none=True)
        if measure:
            with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                loss = forward()
        else:
            loss = forward()
        loss.backward()
        opt.step()
        return loss.item()

    # Steps 1..K run from the initial weights; the first `warmup` of them are not timed
    # (as bench/gpu.ts: 2 warm-up steps, then the rest timed). Step 1 also measures memory.
    losses, ms = [], []
    for k in range(ARGS.steps):
        measure = k == 0
        t0 = time.perf_counter()
        loss = step(measure)
        dt = (time.perf_counter() - t0) * 1e3
        losses.append(loss)
        timed = k >= ARGS.warmup
        if timed:
            ms.append(dt)
        log(f'step {k + 1:3d} loss {loss:.8f} {dt:8.2f} ms' + ('' if timed else ' (warm-up, not timed)')
            + (' [saved-tensor hooks on]' if measure else ''))

    peak = sum(saved.values())
    acts = sum(v for p, v in saved.items() if p not in leaf_ptrs)
    pbytes = sum(p.numel() * p.element_size() for p in params)
    sbytes = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                sbytes += v.numel() * v.element_size()
    frozen = sum(w.numel() * w.element_size() for w in W) + (0 if train_a else sum(a.numel() * a.element_size() for a in A))
    med = statistics.median(ms)
    log(f'loss after {ARGS.steps} steps: {losses[-1]:.8f}; median {med:.2f} ms/step over {len(ms)} timed steps')
    log(f'autograd saved bytes: all distinct storages {peak}, excluding leaf params/inputs {acts}; '
        f'trainable params {pbytes} + optimizer state {sbytes}; frozen {frozen}')
    # SGD (lr 0.05, mean over n*d elements, B = 0 at start) moves the loss by ~5e-8 in 12 steps
    # (float64 reference), i.e. about one float32 ulp of 0.59, so "decreasing" allows equality.
    ok = bool(all(np.isfinite(losses))) and all(b <= a * (1 + 2e-7) for a, b in zip(losses, losses[1:])) and losses[-1] <= losses[0]
    notes = [
        f'threads set before import: OPENBLAS_NUM_THREADS=MKL_NUM_THREADS={T}, OMP_NUM_THREADS={INTRAOP}, '
        f'OMP_WAIT_POLICY={os.environ["OMP_WAIT_POLICY"]}; torch.set_num_threads({INTRAOP}) -> get_num_threads()={torch.get_num_threads()}; '
        'float32 matmul runs in OpenBLAS (pthread build, its own pool), element-wise ops in torch\'s OpenMP pool',
        f'losses: steps 1..{ARGS.steps} from the initial weights; ms: steps {ARGS.warmup + 1}..{ARGS.steps} (the first {ARGS.warmup} are untimed warm-up)',
        'step 1 runs with saved_tensors_hooks to measure memory' + (' (a warm-up step, so not timed)' if ARGS.warmup >= 1 else ' (timed, with hook overhead)'),
        'memory.peak = distinct storages autograd saves in one step (includes x and W where saved); '
        'activationsOnly excludes storages of leaf params/inputs (x, target, W, A, B)',
        f'paramsAndState = trainable params ({pbytes} B) + optimizer state ({sbytes} B); frozen W/A not counted ({frozen} B)',
        f'gelu: torch.nn.functional.gelu(approximate="tanh"); s = alpha/r = {s}',
        'losses finite and non-increasing' if ok else 'WARNING: losses not finite or not decreasing',
        f'loss change steps 1..{ARGS.steps}: {losses[0] - losses[-1]:.3g} (SGD changes it by ~5e-8, about 1 float32 ulp)',
    ]
    return {'system': 'pytorch-cpu', 'threads': T, 'variant': ARGS.variant, 'optimizer': ARGS.optimizer,
            'steps': ARGS.steps, 'losses': losses, 'ms': ms,
            'memory': {'kind': 'autograd-saved-bytes', 'peak': peak, 'activationsOnly': acts, 'paramsAndState': pbytes + sbytes},
            'shape': {'n': int(n), 'd': int(d), 'r': int(r), 'layers': len(layers)},
            'versions': versions(), 'notes': notes}


def main():
    if ARGS.sgemm:
        out = sgemm(ARGS.n, ARGS.d, ARGS.reps)
    else:
        if not ARGS.data:
            sys.exit('--data <file.safetensors> is required (see bench/peers/w1-data.ts)')
        out = run_w1()
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
