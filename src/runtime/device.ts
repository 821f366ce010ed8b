/**
 * WebGPU adapter probe for lorafa.
 *
 * lorafa runs its WGSL kernels through Dawn's Node bindings (npm `webgpu`,
 * which ships a prebuilt `dawn.node`). On Linux Dawn's usable backend is
 * Vulkan, so a machine needs both the Vulkan loader (`libvulkan.so.1`) and a
 * Vulkan driver (an ICD). On GPU-less machines that driver is Mesa's lavapipe
 * (a CPU Vulkan implementation on top of llvmpipe).
 *
 * Why Mesa 25 and not the Mesa that plain Debian bookworm ships:
 *   - Mesa 22.3 (bookworm main) has lavapipe, but Dawn rejects it: it lacks
 *     the descriptor-indexing features Dawn requires for a core adapter
 *     ("shaderUniform*ArrayDynamicIndexing required"), so requestAdapter()
 *     resolves to null.
 *   - Mesa 25 from bookworm-backports provides those features, and Dawn
 *     exposes lavapipe as a core-feature-level adapter.
 * `bash scripts/setup.sh` installs the backports Mesa when no adapter is found.
 *
 * Process lifetime (measured with webgpu 0.6.2 + lavapipe, Node 20):
 *   - The webgpu README warns that dawn.node keeps Node alive while the object
 *     returned by `create()` is reachable (https://issues.chromium.org/issues/387965810).
 *     With 0.6.2 we could not reproduce that: `node` exited in ~0.1 s after the
 *     module finished in every case tried -- GPU object stored on globalThis,
 *     device requested and never destroyed, a compute dispatch + mapAsync
 *     readback, even an un-awaited mapAsync/onSubmittedWorkDone left pending.
 *   - The probe still plays safe: it keeps the GPU object in a local only and
 *     never requests a device. If a future dawn.node does hold the loop open,
 *     callers (CLI, scripts) should set process.exitCode and call
 *     process.exit() after printing, rather than rely on the loop draining.
 *
 * Environment: Mesa's Vulkan WSI can warn "XDG_RUNTIME_DIR is invalid or not
 * set" when that variable is missing (typical in containers/CI). We did not
 * see it for adapter/device/compute use with Mesa 25.0.7 here, but default it
 * to the OS temp dir before loading Dawn anyway; it costs nothing.
 * Harmless Dawn noise on stderr with lavapipe, once per adapter enumeration:
 *   "Warning: maxDynamic{Uniform,Storage}BuffersPerPipelineLayout artificially reduced ..."
 */
import { quietDawn } from './quiet-dawn.ts';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir, totalmem } from 'node:os';

export interface AdapterInfoReport {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** Dawn backend the adapter runs on (e.g. "Vulkan"), when it can be told. */
  backend?: string;
}

/** One memory heap as Dawn describes it (wgpu::MemoryHeapInfo): its size and HeapProperty bits. */
export interface MemoryHeap {
  size: number;
  properties: number;
}

/** wgpu::HeapProperty bits. */
const HEAP_BITS: [number, string][] = [[0x1, 'device-local'], [0x2, 'host-visible'], [0x4, 'host-coherent'], [0x8, 'host-uncached'], [0x10, 'host-cached']];
const DEVICE_LOCAL = 0x1;

/**
 * What can be told about the adapter's memory. WebGPU has no memory query. Dawn has one as an
 * extension (the 'adapter-properties-memory-heaps' feature, heaps chained on its AdapterInfo), and
 * Chromium shows it as GPUAdapterInfo.memoryHeaps; Dawn's Node binding (npm webgpu 0.6.2) does not:
 * its GPUAdapterInfo has vendor, architecture, device, description, the subgroup sizes and
 * isFallbackAdapter only. So the heaps are read only when a binding offers them.
 */
export interface MemoryReport {
  /** The heaps, when the binding exposes GPUAdapterInfo.memoryHeaps with sizes in it. */
  heaps?: MemoryHeap[];
  /** The adapter lists Dawn's 'adapter-properties-memory-heaps' feature. */
  heapsFeature: boolean;
  /** A CPU adapter (lavapipe/llvmpipe, SwiftShader, WARP): its "GPU memory" is host RAM. */
  cpuAdapter: boolean;
}

export type AdapterReport =
  | {
      ok: true;
      info: AdapterInfoReport;
      /** GPUAdapterInfo.isFallbackAdapter (software/fallback adapter flag), when exposed. */
      isFallback?: boolean;
      /** "core" when the adapter has 'core-features-and-limits', else "compatibility". */
      featureLevel?: 'core' | 'compatibility';
      features: string[];
      limits: Record<string, number>;
      memory?: MemoryReport;
      /** os.totalmem(): the host's RAM, in bytes. */
      hostMemory?: number;
    }
  | { ok: false; reason: string; fix: string; hostMemory?: number };

/**
 * GPUAdapterInfo.memoryHeaps where a binding has it (sizes as number or bigint), else undefined.
 * Never throws: a missing field, a getter that throws or an odd shape all read as "not reported".
 */
export function readMemoryHeaps(info: unknown): MemoryHeap[] | undefined {
  try {
    const raw = (info as { memoryHeaps?: unknown } | null | undefined)?.memoryHeaps;
    if (raw === null || typeof raw !== 'object' || typeof (raw as Iterable<unknown>)[Symbol.iterator] !== 'function') return undefined;
    const heaps: MemoryHeap[] = [];
    for (const h of raw as Iterable<{ size?: unknown; properties?: unknown } | null>) {
      const size = typeof h?.size === 'bigint' ? Number(h.size) : h?.size;
      if (typeof size !== 'number' || !Number.isFinite(size) || size <= 0) continue;
      heaps.push({ size, properties: typeof h?.properties === 'number' ? h.properties : 0 });
    }
    return heaps.length ? heaps : undefined;
  } catch {
    return undefined;
  }
}

/** A software adapter that runs on the CPU, whose buffers are host RAM. */
export function isCpuAdapter(info: Partial<AdapterInfoReport>, isFallback?: boolean): boolean {
  if (isFallback === true || info.architecture === 'software') return true;
  const text = `${info.vendor ?? ''} ${info.device ?? ''} ${info.description ?? ''}`;
  return /llvmpipe|lavapipe|softpipe|swiftshader|\bwarp\b|microsoft basic render/i.test(text);
}

const SETUP_FIX = 'bash scripts/setup.sh  (installs Mesa lavapipe, a CPU Vulkan driver, from bookworm-backports)';

/** Limits lorafa's code generator and runtime care about, in display order. */
export const RELEVANT_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'minStorageBufferOffsetAlignment',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupsPerDimension',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupStorageSize',
] as const;

/** Limits whose values are byte counts (shown with a MiB/KiB figure too). */
const BYTE_LIMITS = new Set<string>([
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'minStorageBufferOffsetAlignment',
]);

function errorText(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

/**
 * Ask Dawn for a WebGPU adapter and describe it, or explain why there is none.
 *
 * Never throws: failures to load dawn.node or to request an adapter come back
 * as `{ ok: false, reason, fix }`.
 *
 * Lifetime: only `requestAdapter()` is called; no GPUDevice is created. The
 * GPU object from `create()` is held in a local, so once this returns nothing
 * keeps Dawn's event-loop hooks alive and the process can exit normally.
 */
export async function probeAdapter(): Promise<AdapterReport> {
  process.env.XDG_RUNTIME_DIR ||= tmpdir();

  let webgpu: typeof import('webgpu');
  try {
    webgpu = await import('webgpu');
  } catch (e) {
    return {
      ok: false,
      reason: `could not load Dawn's Node binding (webgpu/dist/${process.platform}-${process.arch}/dawn.node): ${errorText(e)}`,
      fix:
        process.platform === 'linux'
          ? `reinstall the npm packages and the driver: rm -rf node_modules && ${SETUP_FIX}`
          : 'run on a platform the npm package `webgpu` ships a dawn.node for',
    };
  }

  let adapter: GPUAdapter | null;
  try {
    // Dawn's globals (GPUBufferUsage, GPUShaderStage, ...) are needed by code
    // that later uses the device; installing them is harmless for the probe.
    Object.assign(globalThis, webgpu.globals);
    const gpu = webgpu.create([]);
    adapter = await quietDawn(() => gpu.requestAdapter());
  } catch (e) {
    return { ok: false, reason: `Dawn failed while requesting an adapter: ${errorText(e)}`, fix: SETUP_FIX };
  }

  if (!adapter) {
    return { ok: false, ...diagnoseNoAdapter(), hostMemory: totalmem() };
  }

  const features = [...adapter.features].map(String).sort();
  const limits: Record<string, number> = {};
  // GPUSupportedLimits exposes its values as getters on the prototype, so
  // walk the prototype chain rather than Object.keys().
  for (const key of limitKeys(adapter.limits)) {
    const v = (adapter.limits as unknown as Record<string, unknown>)[key];
    if (typeof v === 'number') limits[key] = v;
  }

  const info = adapter.info;
  const infoReport: AdapterInfoReport = {
    vendor: info?.vendor ?? '',
    architecture: info?.architecture ?? '',
    device: info?.device ?? '',
    description: info?.description ?? '',
  };
  const backend = await dawnBackend(webgpu, infoReport);
  if (backend) infoReport.backend = backend;

  const report: AdapterReport = { ok: true, info: infoReport, features, limits };
  const fallback =
    (info as { isFallbackAdapter?: unknown } | undefined)?.isFallbackAdapter ??
    (adapter as unknown as { isFallbackAdapter?: unknown }).isFallbackAdapter;
  if (typeof fallback === 'boolean') report.isFallback = fallback;
  report.featureLevel = features.includes('core-features-and-limits') ? 'core' : 'compatibility';
  const heaps = readMemoryHeaps(info);
  report.memory = {
    ...(heaps ? { heaps } : {}),
    heapsFeature: features.includes('adapter-properties-memory-heaps'),
    cpuAdapter: isCpuAdapter(infoReport, report.isFallback),
  };
  report.hostMemory = totalmem();
  return report;
}

function limitKeys(limits: object): string[] {
  const keys = new Set<string>();
  for (let o: object | null = limits; o && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const k of Object.getOwnPropertyNames(o)) if (k !== 'constructor' && k !== '__brand') keys.add(k);
  }
  return [...keys].sort();
}

/**
 * dawn.node does not put the backend in GPUAdapterInfo. It does list every
 * adapter with its backend when asked for an adapter name that does not
 * exist: requestAdapter() then rejects with
 *   "no suitable backends found\nAvailable adapters:\n * backend: 'vulkan', name: 'llvmpipe (...)'"
 * (documented in the webgpu package README). Parse that; undefined when the
 * format is not recognised or the backend is ambiguous.
 */
async function dawnBackend(webgpu: typeof import('webgpu'), info: AdapterInfoReport): Promise<string | undefined> {
  let text: string;
  try {
    const listing = webgpu.create(['adapter=__lorafa_list_adapters__']);
    await quietDawn(() => listing.requestAdapter());
    return undefined;
  } catch (e) {
    text = errorText(e);
  }
  const found = [...text.matchAll(/backend: '([^']+)', name: '([^']*)'/g)].map((m) => ({
    backend: m[1] ?? '',
    name: m[2] ?? '',
  }));
  const backends = new Set(found.map((a) => a.backend));
  if (backends.size === 1) return pretty([...backends][0] ?? '');
  // Several backends: pick the one whose adapter name matches ours.
  const head = (info.description || info.device).split(/[\s:(]/)[0]?.toLowerCase() ?? '';
  const match = head ? found.filter((a) => a.name.toLowerCase().startsWith(head)) : [];
  return match.length === 1 ? pretty(match[0]?.backend ?? '') : undefined;

  function pretty(b: string): string | undefined {
    const names: Record<string, string> = {
      vulkan: 'Vulkan', metal: 'Metal', d3d11: 'D3D11', d3d12: 'D3D12',
      opengl: 'OpenGL', opengles: 'OpenGL ES', null: 'null', webgpu: 'WebGPU',
    };
    return b ? (names[b] ?? b) : undefined;
  }
}

const LIB_DIRS = [
  '/usr/lib/x86_64-linux-gnu',
  '/usr/lib/aarch64-linux-gnu',
  '/lib/x86_64-linux-gnu',
  '/lib/aarch64-linux-gnu',
  '/usr/lib64',
  '/usr/lib',
  '/usr/local/lib',
];
const ICD_DIRS = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d'];

function dpkgVersion(pkg: string): string | undefined {
  try {
    const out = execFileSync('dpkg-query', ['-W', '-f=${Status}|${Version}', pkg], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const [status, version] = out.split('|');
    return status?.includes('installed') && !status.includes('not-installed') ? version : undefined;
  } catch {
    return undefined;
  }
}

/** Work out why Dawn returned no adapter (Linux-centric; best effort). */
function diagnoseNoAdapter(): { reason: string; fix: string } {
  if (process.platform !== 'linux') {
    return {
      reason: 'Dawn found no WebGPU adapter (no GPU driver with Metal/D3D12/Vulkan support?)',
      fix: 'install or update the GPU driver; scripts/setup.sh only handles Debian/Ubuntu Linux',
    };
  }

  const libDirs = [...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean), ...LIB_DIRS];
  const hasLoader = libDirs.some((d) => existsSync(`${d}/libvulkan.so.1`));
  if (!hasLoader) {
    return {
      reason: 'no Vulkan driver: the Vulkan loader libvulkan.so.1 is not installed, so Dawn has no backend to use',
      fix: SETUP_FIX,
    };
  }

  const icds = ICD_DIRS.flatMap((d) => {
    try {
      return readdirSync(d).filter((f) => f.endsWith('.json'));
    } catch {
      return [];
    }
  });
  const envIcds = process.env.VK_DRIVER_FILES || process.env.VK_ICD_FILENAMES;
  if (icds.length === 0 && !envIcds) {
    return {
      reason: 'no Vulkan driver: libvulkan.so.1 is present but no Vulkan ICD is installed (nothing in /usr/share/vulkan/icd.d)',
      fix: SETUP_FIX,
    };
  }

  const mesa = dpkgVersion('mesa-vulkan-drivers');
  const mesaMajor = mesa ? Number(/^(?:\d+:)?(\d+)\./.exec(mesa)?.[1]) : NaN;
  if (mesa && Number.isFinite(mesaMajor) && mesaMajor < 23) {
    return {
      reason:
        `Mesa ${mesa} is too old: its lavapipe Vulkan driver lacks features Dawn requires ` +
        '("shaderUniform*ArrayDynamicIndexing required"), so Dawn rejects it; Mesa 25 from bookworm-backports works',
      fix: SETUP_FIX,
    };
  }

  return {
    reason:
      `Dawn found no usable Vulkan adapter (ICDs: ${icds.join(', ') || envIcds}` +
      `${mesa ? `; mesa-vulkan-drivers ${mesa}` : ''}); Dawn's warnings on stderr say why ` +
      '(a lavapipe older than Mesa 23 is rejected with "shaderUniform*ArrayDynamicIndexing required")',
    fix: SETUP_FIX,
  };
}

function fmtInt(n: number): string {
  return n.toLocaleString('en-US');
}

function fmtBytes(n: number): string {
  const units: [string, number][] = [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]];
  for (const [unit, size] of units) {
    if (n >= size * 0.99) {
      const x = n / size;
      const approx = Number.isInteger(x) ? `${x}` : `~${Number(x.toFixed(1))}`;
      return `${fmtInt(n)} (${approx} ${unit})`;
    }
  }
  return `${fmtInt(n)} B`;
}

const gib = (n: number) => `${(n / 2 ** 30).toFixed(1)} GiB`;

function heapProps(p: number): string {
  const names = HEAP_BITS.filter(([bit]) => p & bit).map(([, name]) => name);
  return names.length ? names.join(', ') : 'no properties';
}

/** The memory lines: the adapter's memory as the platform reports it, or plainly that it does not. */
export function memoryLines(r: AdapterReport): string[] {
  const host = typeof r.hostMemory === 'number' && r.hostMemory > 0 ? gib(r.hostMemory) : undefined;
  const row = (label: string, text: string) => `    ${label.padEnd(16)}${text}`;
  const hostLine = row('host RAM:', host ? `${host} (os.totalmem)` : 'not reported');
  if (!r.ok) return ['  memory:', row('GPU memory:', 'no adapter'), hostLine];
  const m = r.memory;
  const name = (r.info.description || r.info.device || '').split(/[\s:(]/)[0] || 'the adapter';
  let gpu: string;
  if (m?.heaps?.length) {
    const local = m.heaps.filter((h) => h.properties & DEVICE_LOCAL);
    const total = (local.length ? local : m.heaps).reduce((a, h) => a + h.size, 0);
    gpu = `${gib(total)}${local.length ? ' device-local' : ''}, as Dawn's memory heaps report it (${m.heaps.map((h) => `${gib(h.size)} ${heapProps(h.properties)}`).join('; ')})`;
    if (m.cpuAdapter) gpu += `; ${name} is a CPU adapter: its buffers live in host RAM`;
  } else if (m?.cpuAdapter) {
    gpu = `host RAM${host ? ` (${host})` : ''}: ${name} is a CPU adapter, its buffers live in host RAM; WebGPU reports no memory size`;
  } else {
    gpu =
      'not reported: WebGPU has no memory query' +
      (m?.heapsFeature
        ? ", and this Dawn binding exposes no GPUAdapterInfo.memoryHeaps although the adapter has 'adapter-properties-memory-heaps'"
        : ", and this Dawn binding exposes no memory heaps (no 'adapter-properties-memory-heaps' feature)") +
      '; the vendor\'s tool (e.g. nvidia-smi) tells';
  }
  const lines = ['  memory:', row('GPU memory:', gpu), hostLine];
  const maxBuffer = r.limits?.maxBufferSize;
  if (typeof maxBuffer === 'number') lines.push(row('largest buffer:', `${gib(maxBuffer)} (maxBufferSize: one buffer, not the total)`));
  return lines;
}

/** Human-readable, multi-line description of a probe result. */
export function formatAdapterReport(r: AdapterReport): string {
  if (!r.ok) {
    return [`WebGPU adapter: none`, `  reason: ${r.reason}`, `  fix:    ${r.fix}`, ...memoryLines(r)].join('\n');
  }
  const { info } = r;
  const name = info.description || info.device || '(unnamed adapter)';
  const lines: string[] = [];
  lines.push(`WebGPU adapter: ${name}${info.backend ? ` (${info.backend})` : ''}`);
  lines.push(`  vendor:        ${info.vendor || '-'}`);
  lines.push(`  architecture:  ${info.architecture || '-'}`);
  lines.push(`  device:        ${info.device || '-'}`);
  const flags: string[] = [];
  if (r.featureLevel) flags.push(`feature level ${r.featureLevel}`);
  if (r.isFallback !== undefined) flags.push(r.isFallback ? 'fallback adapter' : 'not a fallback adapter');
  if (flags.length) lines.push(`  kind:          ${flags.join(', ')}`);
  lines.push(`  features (${r.features.length}): ${r.features.length ? r.features.join(', ') : '(none)'}`);
  lines.push('  limits:');
  const width = Math.max(...RELEVANT_LIMITS.map((k) => k.length));
  for (const key of RELEVANT_LIMITS) {
    const v = r.limits[key];
    const shown = v === undefined ? '(not reported)' : BYTE_LIMITS.has(key) ? fmtBytes(v) : fmtInt(v);
    lines.push(`    ${key.padEnd(width)}  ${shown}`);
  }
  lines.push(...memoryLines(r));
  return lines.join('\n');
}
