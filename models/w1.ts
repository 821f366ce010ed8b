// W1, the standard speed workload: a stack of `layers` square linears y = x·W (no bias) over
// `batch` tokens of width d, GELU between them, mean squared error against a target input.
// Under --mode lora / lora-fa every layer becomes y = x·W + s·(x·A)·B with W frozen; the LoRA rank
// r is the CLI's --rank (8 for W1). `batch` is the token count n: `--batch 256` halves it.
//   lorafa train models/w1.ts --mode lora-fa --rank 8 --optimizer sgd     (n 512, d 768, 4 layers)
import { defineModel } from 'lorafa';

export default defineModel({
  name: 'w1',
  description: 'W1 speed workload: layers × (x·W, GELU between), MSE against a target',
  configs: {
    w1: { batch: 512, d: 768, layers: 4 },
    toy: { batch: 8, d: 16, layers: 2 },
  },
  defaultConfig: 'w1',
  defaultTargets: ['fc'],
  build(b, cfg) {
    const x = b.input('x', [cfg.batch, cfg.d]);
    const target = b.input('target', [cfg.batch, cfg.d]);
    let h = x;
    for (let i = 0; i < cfg.layers; i++) {
      h = b.scope(`layers.${i}`, () => {
        const y = b.linear(h, 'fc', cfg.d, { bias: false });
        return i < cfg.layers - 1 ? b.gelu(y) : y;
      });
    }
    b.output('y', h);
    b.loss(b.mse(h, target));
  },
});
