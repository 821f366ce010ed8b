// A multilayer perceptron classifier: features → [Linear → ReLU] × depth → Linear → cross-entropy.
import { defineModel } from 'lorafa';

export default defineModel({
  name: 'mlp',
  description: 'MLP classifier (ReLU hidden layers, cross-entropy over integer labels)',
  configs: {
    toy: { batch: 4, inputs: 12, hidden: 16, depth: 2, classes: 3 },
    mnist: { batch: 64, inputs: 784, hidden: 256, depth: 2, classes: 10 },
  },
  defaultConfig: 'toy',
  // The hidden layers get adapters; the 3-wide head trains fully (PEFT's modules_to_save), since
  // a rank-8 adapter cannot be narrower than a 3-class output.
  defaultTargets: ['fc1', 'fc2'],
  modulesToSave: ['fc3'],
  build(b, cfg) {
    const x = b.input('x', [cfg.batch, cfg.inputs]);
    const labels = b.input('labels', [cfg.batch], 'i32');
    let h = x;
    for (let i = 1; i <= cfg.depth; i++) {
      const z = b.linear(h, `fc${i}`, cfg.hidden);
      h = b.scope(`fc${i}`, () => b.relu(z));
    }
    const logits = b.linear(h, `fc${cfg.depth + 1}`, cfg.classes);
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, labels));
  },
});
