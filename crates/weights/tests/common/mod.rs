//! Helpers shared by the integration tests: fixture paths, a tiny pickle writer, torch-style
//! zip and legacy file builders.
#![allow(dead_code)]

use std::io::{Cursor, Read, Write};
use std::path::PathBuf;

use zip::write::SimpleFileOptions;

pub fn fixture(rel: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/")).join(rel);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

pub fn read_fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

/// A protocol-2 pickle under construction (opcodes as `torch.save` writes them).
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 0x02])
    }
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    pub fn mark(&mut self) -> &mut Self {
        self.op(b'(')
    }
    pub fn tuple(&mut self) -> &mut Self {
        self.op(b't')
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    pub fn int(&mut self, i: i32) -> &mut Self {
        self.0.push(b'J');
        self.0.extend(i.to_le_bytes());
        self
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    pub fn ints(&mut self, v: &[i32]) -> &mut Self {
        self.mark();
        for &i in v {
            self.int(i);
        }
        self.tuple()
    }
    /// Pushes `_rebuild_tensor_v2(storage(key), offset, shape, stride, False, OrderedDict())`.
    pub fn tensor(
        &mut self,
        class: &str,
        key: &str,
        numel: i32,
        offset: i32,
        shape: &[i32],
        stride: &[i32],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark().str("storage").global("torch", class).str(key).str("cpu").int(numel).tuple().op(b'Q');
        self.int(offset).ints(shape).ints(stride).op(0x89);
        self.global("collections", "OrderedDict").op(b')').op(b'R');
        self.tuple().op(b'R')
    }
    pub fn stop(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        self.0.clone()
    }
}

/// Pickle of `{name: tensor, ...}` written by `body` between `}(` and `u`.
pub fn dict_pickle(body: impl FnOnce(&mut Pickle)) -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b'}').mark();
    body(&mut p);
    p.op(b'u').stop()
}

/// A torch.save-style zip: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
pub fn torch_zip(pickle: &[u8], byteorder: &str, storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pickle).unwrap();
    w.start_file("archive/byteorder", opts).unwrap();
    w.write_all(byteorder.as_bytes()).unwrap();
    for (key, data) in storages {
        w.start_file(format!("archive/data/{key}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Entries of a zip: (name, bytes).
pub fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            (f.name().unwrap().to_string(), buf)
        })
        .collect()
}

pub fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    rezip_with(entries, zip::CompressionMethod::Stored)
}

pub fn rezip_with(entries: &[(String, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub const MAGIC_PICKLE: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

/// A legacy torch.save stream: magic, 1001, sys_info, `main`, key list, storages
/// (each `u64 LE count` + raw bytes; `elem` bytes per element).
pub fn legacy_file(main: &[u8], storages: &[(&str, usize, Vec<u8>)]) -> Vec<u8> {
    let mut out = MAGIC_PICKLE.to_vec();
    out.extend(b"\x80\x02M\xe9\x03.");
    let mut sys = Pickle::new();
    sys.op(b'}').mark().str("protocol_version").int(1001).str("little_endian").op(0x88).op(b'u');
    out.extend(sys.stop());
    out.extend(main);
    let mut keys = Pickle::new();
    keys.op(b']').mark();
    for (k, _, _) in storages {
        keys.str(k);
    }
    keys.op(b'e');
    out.extend(keys.stop());
    for (_, elem, data) in storages {
        out.extend(((data.len() / elem) as u64).to_le_bytes());
        out.extend(data);
    }
    out
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Deterministic xorshift64* generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
