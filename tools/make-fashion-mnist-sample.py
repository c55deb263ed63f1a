#!/usr/bin/env python3
"""Writes the small Fashion-MNIST sample under samples/fashion-mnist/ (committed; used by the
demo and the engine's fine-tuning test) from Debian's dataset-fashion-mnist package
(`apt-get install dataset-fashion-mnist`). Standard library only; deterministic."""
import gzip, os, struct, sys, zlib

SRC = "/usr/share/datasets/fashion-mnist"
CLASSES = {1: "trouser", 3: "dress", 7: "sneaker", 8: "bag"}
PER_CLASS = 80

def png(pixels, w, h):
    raw = b"".join(b"\x00" + bytes(pixels[y * w:(y + 1) * w]) for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")

def main(out):
    images = gzip.open(f"{SRC}/train-images-idx3-ubyte.gz").read()
    labels = gzip.open(f"{SRC}/train-labels-idx1-ubyte.gz").read()
    n, rows, cols = struct.unpack(">III", images[4:16])
    counts = {c: 0 for c in CLASSES}
    for i in range(n):
        label = labels[8 + i]
        if label not in CLASSES or counts[label] >= PER_CLASS:
            continue
        counts[label] += 1
        folder = os.path.join(out, CLASSES[label])
        os.makedirs(folder, exist_ok=True)
        pixels = images[16 + i * rows * cols:16 + (i + 1) * rows * cols]
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
            f.write(png(pixels, cols, rows))
        if all(v >= PER_CLASS for v in counts.values()):
            break

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "samples/fashion-mnist")
