#!/usr/bin/env node
// Turns a `minigpt demo-data` split into what train.py reads, with the RUNTIME's own code so that training
// sees exactly what inference will see:
//   - images: decoded by sharp and resized by our bit-exact port of PIL's bicubic resize (the same as
//     `minigpt ask` / `minigpt eval` do before the vision graph) -> OUT/images.u8, uint8 [N, S, S, 3];
//   - text: the conversation prompt built by conversationPrompt (CONV_VISION_minigptv2: '<s>[INST] ',
//     ' [/INST]', '<Img><ImageHere></Img>'), split on '<ImageHere>' and tokenised as get_context_emb does
//     (BOS on segment 0 only) by our tokenizer; the target is the LAST turn's answer + '</s>' (earlier turns
//     are context, as the runtime re-sends them);
//   - OUT/samples.jsonl: {"i": image index, "pre": ids before the image, "post": ids after it, "target": ids,
//     "about": the index in objects.json of the object the answer is about, when the split says so};
//   - OUT/objects.json: per image, its objects (colour, shape, box as fractions of the image) for the
//     vision encoder's auxiliary loss (train.py --aux-weight);
//   - OUT/tokenizer.json (the 512-piece demo tokenizer of scripts/build-demo-model.mjs), OUT/meta.json.
//
//   npm run build && node models/demo/train/prepare.mjs --data SPLIT_DIR --out PREPARED_DIR [--image-size 112]
import { mkdir, readFile, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { arg } from './args.mjs';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..', '..');

async function main() {
  const data = arg('--data');
  const out = arg('--out');
  const size = Number(arg('--image-size', '112'));
  const dist = (p) => import(join(ROOT, 'dist', 'src', p));
  const { createTokenizer } = await dist('inference/tokenizer.js');
  const { promptSegmentIds } = await dist('inference/context.js');
  const { conversationPrompt } = await dist('inference/prompt.js');
  const { MINIGPT_V2_PROMPT } = await dist('inference/presets.js');
  const { decodeImageRgb, resizeBicubicPil } = await dist('image/preprocess.js');
  const { demoTokenizerJson } = await import(join(ROOT, 'scripts', 'build-demo-model.mjs'));

  const tokJson = demoTokenizerJson();
  const tok = createTokenizer(tokJson, {}, { bosId: 1, eosId: 2 });
  const spec = MINIGPT_V2_PROMPT;
  await mkdir(out, { recursive: true });

  const lines = (await readFile(join(data, 'train.jsonl'), 'utf8')).split('\n').filter(Boolean);
  const imageIndex = new Map();
  const images = [];
  const samples = [];
  let maxLen = 0;
  let unk = 0;
  for (const line of lines) {
    const s = JSON.parse(line);
    let i = imageIndex.get(s.image);
    if (i === undefined) {
      i = images.length;
      imageIndex.set(s.image, i);
      images.push(s.image);
    }
    const last = s.turns[s.turns.length - 1];
    const prompt = conversationPrompt(spec, [...s.turns.slice(0, -1), { user: last.user }]);
    const [pre, post] = promptSegmentIds(prompt, spec.imageToken, 1, tok);
    const target = [...tok.encode(last.assistant, { addBos: false }), 2];
    if (tok.decode(target.slice(0, -1)) !== last.assistant)
      throw new Error(`the tokenizer does not round-trip ${JSON.stringify(last.assistant)}`);
    unk += [...pre, ...post, ...target].filter((t) => t === 0).length;
    samples.push(JSON.stringify({ i, pre, post, target, ...(s.about === undefined ? {} : { about: s.about }) }));
    maxLen = Math.max(maxLen, pre.length + post.length + target.length);
  }

  const fh = await open(join(out, 'images.u8'), 'w');
  try {
    for (let k = 0; k < images.length; k++) {
      const rgb = await decodeImageRgb(await readFile(join(data, images[k])));
      const r = resizeBicubicPil(rgb, size, size);
      await fh.write(r.data);
      if ((k + 1) % 500 === 0) console.error(`prepare: ${k + 1}/${images.length} images`);
    }
  } finally {
    await fh.close();
  }
  await writeFile(join(out, 'samples.jsonl'), `${samples.join('\n')}\n`);
  // The scenes' ground truth per prepared image (for train.py's --aux-weight): boxes as fractions of the
  // image (the resize does not keep the aspect ratio, so they are fractions of the square input too), in
  // drawing order (later objects are on top).
  const scenes = JSON.parse(await readFile(join(data, 'scenes.json'), 'utf8'));
  const byImage = new Map(scenes.map((sc) => [sc.image, sc]));
  const objects = images.map((img) => {
    const sc = byImage.get(img);
    if (!sc) throw new Error(`scenes.json has no entry for ${img}`);
    return sc.objects.map((o) => ({
      colour: o.colour,
      shape: o.shape,
      box: [o.bbox[0] / sc.width, o.bbox[1] / sc.height, (o.bbox[0] + o.bbox[2]) / sc.width, (o.bbox[1] + o.bbox[3]) / sc.height].map(
        (v) => Math.round(Math.min(1, Math.max(0, v)) * 1e4) / 1e4,
      ),
    }));
  });
  await writeFile(join(out, 'objects.json'), `${JSON.stringify(objects)}\n`);
  await writeFile(join(out, 'tokenizer.json'), `${JSON.stringify(tokJson)}\n`);
  const manifest = JSON.parse(await readFile(join(data, 'manifest.json'), 'utf8').catch(() => '{}'));
  const meta = {
    imageSize: size,
    images: images.length,
    samples: samples.length,
    maxTextTokens: maxLen,
    vocabSize: tok.vocabSize,
    unkTokens: unk,
    source: { data, seed: manifest.seed, count: manifest.count },
  };
  await writeFile(join(out, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
  console.error(`prepare: ${images.length} images, ${samples.length} samples, longest text ${maxLen} tokens -> ${out}`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
