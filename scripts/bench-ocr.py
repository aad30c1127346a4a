#!/usr/bin/env python3
"""The onnxruntime reference for scripts/bench-ocr.sh: the same PP-OCR pipeline as
models/src/vision/ocr (same constants, batching and reading order), with OpenCV for the geometry
(contours, minimum-area rectangles, perspective warps), timed on the same images.

usage: bench-ocr.py MODEL_DIR RUNS IMAGE...   (one JSON object per image on stdout)
Benchmark-only: never a runtime or test dependency.
"""
import json
import math
import resource
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image

LIMIT_SIDE, BIN_THRESH, BOX_THRESH, UNCLIP_RATIO, MIN_SIDE = 960, 0.3, 0.6, 1.5, 3.0
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
HEIGHT, MIN_WIDTH, WIDTH_STEP, MAX_WIDTH, CLS_WIDTH = 48, 320, 64, 3200, 192
REC_BATCH, CLS_BATCH, DROP_SCORE, TALL, CLS_THRESH = 6, 8, 0.5, 1.5, 0.9
SAME_ROW, PARAGRAPH_GAP = 0.5, 1.6


class Ocr:
    def __init__(self, d):
        self.det = ort.InferenceSession(f"{d}/ppocrv6_det.onnx", providers=["CPUExecutionProvider"])
        self.cls = ort.InferenceSession(f"{d}/ppocr_cls.onnx", providers=["CPUExecutionProvider"])
        self.rec = ort.InferenceSession(f"{d}/ppocrv6_rec.onnx", providers=["CPUExecutionProvider"])
        chars = self.rec.get_modelmeta().custom_metadata_map["character"].split("\n")
        self.chars = chars + [" "]

    def detect(self, img):
        h, w = img.shape[:2]
        ratio = LIMIT_SIDE / max(w, h) if max(w, h) > LIMIT_SIDE else 1.0
        rw, rh = (max(32, int(round(v * ratio / 32)) * 32) for v in (w, h))
        x = np.asarray(Image.fromarray(img).resize((rw, rh), Image.BILINEAR), np.float32) / 255.0
        x = (x[:, :, ::-1] - MEAN) / STD  # BGR with the RGB constants, as PaddleOCR
        prob = self.det.run(None, {"x": x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0, 0]
        bitmap = (prob > BIN_THRESH).astype(np.uint8)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = []
        for c in contours[:1000]:
            (cx, cy), (bw, bh), ang = cv2.minAreaRect(c.reshape(-1, 2).astype(np.float32))
            if min(bw, bh) < MIN_SIDE:
                continue
            box = cv2.boxPoints(((cx, cy), (bw + 1, bh + 1), ang))  # pixel centres -> areas
            mask = np.zeros_like(bitmap)
            cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
            if mask.sum() == 0 or prob[mask > 0].mean() < BOX_THRESH:
                continue
            d = bw * bh * UNCLIP_RATIO / (2 * (bw + bh))
            if min(bw, bh) + 2 * d < MIN_SIDE + 2:
                continue
            box = cv2.boxPoints(((cx, cy), (bw + 2 * d, bh + 2 * d), ang))
            box[:, 0] = np.clip(box[:, 0] * w / rw, 0, w)
            box[:, 1] = np.clip(box[:, 1] * h / rh, 0, h)
            p = sorted(map(tuple, box), key=lambda q: q[0])
            l0, l1 = sorted(p[:2], key=lambda q: q[1])
            r0, r1 = sorted(p[2:], key=lambda q: q[1])
            out.append([l0, r0, r1, l1])
        return out

    @staticmethod
    def crop(img, q):
        q = np.array(q, np.float32)
        w = max(1, int(round(max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[3] - q[2])))))
        h = max(1, int(round(max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2])))))
        m = cv2.getPerspectiveTransform(q, np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32))
        return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    @staticmethod
    def batch(crops, width):
        x = np.zeros((len(crops), 3, HEIGHT, width), np.float32)
        for i, c in enumerate(crops):
            cw = min(width, max(1, math.ceil(HEIGHT * c.shape[1] / max(1, c.shape[0]))))
            r = np.asarray(Image.fromarray(c).resize((cw, HEIGHT), Image.BILINEAR), np.float32)
            x[i, :, :, :cw] = (r[:, :, ::-1] / 127.5 - 1.0).transpose(2, 0, 1)
        return x

    def read(self, img):
        quads = []
        for tl, tr, br, bl in self.detect(img):
            w, h = math.dist(tl, tr), math.dist(tl, bl)
            quads.append([tr, br, bl, tl] if h >= TALL * w else [tl, tr, br, bl])
        crops = [self.crop(img, q) for q in quads]
        for s in range(0, len(crops), CLS_BATCH):
            p = self.cls.run(None, {"x": self.batch(crops[s : s + CLS_BATCH], CLS_WIDTH)})[0]
            for k, (a, b) in enumerate(p):
                if b > a and b > CLS_THRESH:
                    i = s + k
                    quads[i] = [quads[i][2], quads[i][3], quads[i][0], quads[i][1]]
                    crops[i] = crops[i][::-1, ::-1].copy()
        sw = [min(MAX_WIDTH, max(1, math.ceil(HEIGHT * c.shape[1] / max(1, c.shape[0])))) for c in crops]
        order = sorted(range(len(crops)), key=lambda i: sw[i])
        pieces = []
        for s in range(0, len(order), REC_BATCH):
            idx = order[s : s + REC_BATCH]
            width = -(-max(max(sw[i] for i in idx), MIN_WIDTH) // WIDTH_STEP) * WIDTH_STEP
            probs = self.rec.run(None, {"x": self.batch([crops[i] for i in idx], width)})[0]
            for i, p in zip(idx, probs):
                best, mx = p.argmax(1), p.max(1)
                text, sc, prev = [], [], 0
                for b, m in zip(best, mx):
                    if b != 0 and b != prev:
                        text.append(self.chars[b - 1])
                        sc.append(m)
                    prev = b
                t, score = "".join(text).strip(), float(np.mean(sc)) if sc else 0.0
                if score >= DROP_SCORE and t:
                    pieces.append((t, score, quads[i]))
        return arrange(pieces)


def arrange(pieces):
    """Reading order and paragraphs, as models/src/vision/ocr/order.rs."""
    if not pieces:
        return ""
    weight, dirs = [0.0] * 4, []
    for t, _, q in pieces:
        d = np.subtract(q[1], q[0]) + np.subtract(q[2], q[3])
        d = d / max(np.linalg.norm(d), 1e-9)
        b = int(round(math.atan2(d[1], d[0]) / (math.pi / 2))) % 4
        dirs.append((d, len(t), b))
        weight[b] += len(t)
    best = max(range(4), key=lambda b: (weight[b], -b))
    s = sum(d * n for d, n, b in dirs if b == best)
    d = s / np.linalg.norm(s) if np.linalg.norm(s) > 0 else np.array([1.0, 0.0])
    n = np.array([-d[1], d[0]])
    placed = []
    for t, _, q in pieces:
        us, vs = [np.dot(p, d) for p in q], [np.dot(p, n) for p in q]
        h = (math.dist(q[3], q[0]) + math.dist(q[2], q[1])) / 2
        placed.append((t, min(us), (min(vs) + max(vs)) / 2, max(1.0, min(h, max(vs) - min(vs)))))
    placed.sort(key=lambda p: (p[2], p[1]))
    rows = []
    for p in placed:
        if rows:
            r = rows[-1]
            rv, rh = np.mean([x[2] for x in r]), np.mean([x[3] for x in r])
            if abs(p[2] - rv) < SAME_ROW * min(p[3], rh):
                r.append(p)
                continue
        rows.append([p])
    paragraphs, cur, prev = [], [], None
    for r in rows:
        r.sort(key=lambda x: x[1])
        v, h = np.mean([x[2] for x in r]), np.mean([x[3] for x in r])
        if prev and v - prev[0] > PARAGRAPH_GAP * (h + prev[1]) / 2 and cur:
            paragraphs.append("\n".join(cur))
            cur = []
        prev = (v, h)
        cur.append(" ".join(x[0] for x in r))
    if cur:
        paragraphs.append("\n".join(cur))
    return "\n\n".join(paragraphs)


def main():
    model_dir, runs, images = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    t = time.perf_counter()
    ocr = Ocr(model_dir)
    load_ms = (time.perf_counter() - t) * 1e3
    for path in images:
        img = np.asarray(Image.open(path).convert("RGB"))
        times, text = [], ""
        for _ in range(max(1, runs)):
            t = time.perf_counter()
            text = ocr.read(img)
            times.append((time.perf_counter() - t) * 1e3)
        rest = sorted(times[1:] or times)
        print(json.dumps({
            "image": path, "text": text, "load_ms": load_ms, "first_ms": times[0],
            "median_ms": rest[len(rest) // 2], "runs": len(times),
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
