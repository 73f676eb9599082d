// A package's graph without some of its outputs, and without the nodes only they needed: on WebGPU the decoder
// runs in 'present' KV mode, which never reads `present_new.*`, yet onnxruntime runs every node of the graph
// whatever is fetched (and Node's binding must fetch every output there). The weights stay in the package's
// data file; only the small graph file is rewritten, in memory.
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

/** `model` (an .onnx file's bytes) with the outputs `drop` selects removed, and every node left unused. */
export function withoutOutputs(model: Uint8Array, drop: (name: string) => boolean): { model: Uint8Array; removedNodes: number } {
  const m = onnx.ModelProto.decode(model);
  const graph = m.graph;
  if (!graph) throw new Error('the model has no graph');
  graph.output = (graph.output ?? []).filter((o) => !drop(o.name ?? ''));
  const nodes = graph.node ?? [];
  // Graphs with subgraphs (If, Loop, Scan) read values by name from inside them: left as they are.
  if (nodes.some((n) => (n.attribute ?? []).some((a) => a.g || (a.graphs?.length ?? 0) > 0))) {
    return { model: onnx.ModelProto.encode(m).finish(), removedNodes: 0 };
  }
  const kept = [...nodes];
  let removed = 0;
  for (;;) {
    const used = new Set<string>((graph.output ?? []).map((o) => o.name ?? ''));
    for (const n of kept) for (const i of n.input ?? []) used.add(i);
    const before = kept.length;
    for (let k = kept.length - 1; k >= 0; k--) {
      if (!(kept[k].output ?? []).some((o) => o !== '' && used.has(o))) kept.splice(k, 1);
    }
    removed += before - kept.length;
    if (kept.length === before) break;
  }
  graph.node = kept;
  return { model: onnx.ModelProto.encode(m).finish(), removedNodes: removed };
}
