//! Hostile and broken input: refused globals, garbage, corrupt headers.

mod common;

use common::{MAGIC_PICKLE, Pickle, Rng, dict_pickle, f32_bytes, legacy_file, torch_zip};
use deeptune_weights::{WeightsError, load_bytes, load_file};

fn refused(r: Result<deeptune_weights::StateDict, WeightsError>) -> String {
    match r {
        Err(WeightsError::UnsupportedGlobal { name }) => name,
        other => panic!("expected UnsupportedGlobal, got {other:?}"),
    }
}

/// `os.system("echo pwned")` via GLOBAL + REDUCE.
fn os_system_pickle() -> Vec<u8> {
    let mut p = Pickle::new();
    p.global("os", "system").mark().str("echo pwned").tuple().op(b'R');
    p.stop()
}

/// `builtins.eval("...")` via STACK_GLOBAL (protocol 4, as Python 3 writes it).
fn eval_pickle() -> Vec<u8> {
    let mut p = vec![0x80, 0x04, 0x95];
    p.extend(40u64.to_le_bytes());
    p.extend(b"\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94");
    p.extend(b"\x8c\x10__import__('os')\x94\x85\x94R\x94.");
    p
}

#[test]
fn global_os_system_is_refused() {
    assert_eq!(refused(load_bytes(&os_system_pickle())), "os.system");
}

#[test]
fn stack_global_builtins_eval_is_refused() {
    assert_eq!(refused(load_bytes(&eval_pickle())), "builtins.eval");
}

#[test]
fn refusal_message_names_the_global() {
    let err = load_bytes(&os_system_pickle()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "the checkpoint asks for Python global `os.system`, which a state_dict never needs; refusing to load it"
        ),
        "{msg}"
    );
}

#[test]
fn malicious_pickle_inside_a_torch_zip_is_refused() {
    let zip = torch_zip(&os_system_pickle(), "little", &[]);
    assert_eq!(refused(load_bytes(&zip)), "os.system");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.pth");
    std::fs::write(&path, &zip).unwrap();
    assert_eq!(refused(load_file(&path)), "os.system");

    let zip = torch_zip(&eval_pickle(), "little", &[]);
    assert_eq!(refused(load_bytes(&zip)), "builtins.eval");
}

#[test]
fn malicious_global_after_valid_tensors_is_refused() {
    // A real-looking state_dict whose last entry smuggles in a call.
    let pkl = dict_pickle(|p| {
        p.str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
        p.str("x").global("os", "system").mark().str("id").tuple().op(b'R');
    });
    let zip = torch_zip(&pkl, "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    assert_eq!(refused(load_bytes(&zip)), "os.system");
    // Same in the legacy format, in the main pickle.
    let file = legacy_file(&pkl, &[("0", 4, f32_bytes(&[1.0, 2.0]))]);
    assert_eq!(refused(load_bytes(&file)), "os.system");
}

#[test]
fn whole_model_and_numpy_globals_are_refused() {
    let mut p = Pickle::new();
    p.global("__main__", "Model").op(b')').op(0x81);
    let zip = torch_zip(&p.stop(), "little", &[]);
    assert_eq!(refused(load_bytes(&zip)), "__main__.Model");

    let mut p = Pickle::new();
    p.op(b'}').mark().str("best_acc").global("numpy.core.multiarray", "scalar");
    let zip = torch_zip(&p.stop(), "little", &[]);
    assert_eq!(refused(load_bytes(&zip)), "numpy.core.multiarray.scalar");

    let mut p = Pickle::new();
    p.global("torch.nn.modules.conv", "Conv2d");
    let file = [MAGIC_PICKLE, &p.stop()].concat();
    // The magic pickle is fine; the next one is the protocol version, which must be an int...
    assert!(load_bytes(&file).is_err());
}

#[test]
fn empty_and_random_input_is_not_a_checkpoint() {
    let err = load_bytes(&[]).unwrap_err();
    assert!(matches!(err, WeightsError::NotACheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("not a checkpoint (expected safetensors or a PyTorch .pth)"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(load_file(&empty), Err(WeightsError::NotACheckpoint { .. })));

    let mut rng = Rng(42);
    let random: Vec<u8> = (0..100_000).map(|_| rng.next() as u8).collect();
    let err = load_bytes(&random).unwrap_err();
    assert!(matches!(err, WeightsError::NotACheckpoint { .. }), "{err}");

    // Many random buffers, some forced to look like each format.
    for i in 0..300 {
        let len = rng.below(300);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        match i % 4 {
            0 if len >= 4 => b[..4].copy_from_slice(b"PK\x03\x04"),
            1 if len >= 9 => {
                b[..8].copy_from_slice(&((len as u64).saturating_sub(8)).to_le_bytes());
                b[8] = b'{';
            }
            2 if len >= 2 => b[..2].copy_from_slice(&[0x80, 0x02]),
            _ => {}
        }
        assert!(load_bytes(&b).is_err());
    }

    assert!(matches!(load_bytes(b"hello world, not weights"), Err(WeightsError::NotACheckpoint { .. })));
    // A zip without data.pkl.
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("readme.txt", zip::write::SimpleFileOptions::default()).unwrap();
    let z = w.finish().unwrap().into_inner();
    assert!(matches!(load_bytes(&z), Err(WeightsError::NotACheckpoint { .. })));
    // A plain pickle without the magic number.
    assert!(matches!(load_bytes(b"\x80\x02}q\x00."), Err(WeightsError::NotACheckpoint { .. })));
}

#[test]
fn corrupt_safetensors_headers_are_errors() {
    let good = common::read_fixture("vit_tiny/weights.safetensors");
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    // Header JSON broken in the middle.
    let mut b = good.clone();
    b[8 + n / 2] = b'#';
    assert!(matches!(load_bytes(&b), Err(WeightsError::Safetensors(_))));
    // Header length pointing past the end of the file.
    let mut b = good.clone();
    b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(load_bytes(&b).is_err());
    // Header cut off.
    assert!(load_bytes(&good[..8 + n / 2]).is_err());
    // Data cut off.
    assert!(load_bytes(&good[..good.len() - 1]).is_err());
    // Offsets pointing outside the data.
    let header = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
    let bad = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[9999999,", 1);
    if bad != header {
        let mut b = (bad.len() as u64).to_le_bytes().to_vec();
        b.extend(bad.as_bytes());
        b.extend(&good[8 + n..]);
        assert!(load_bytes(&b).is_err());
    }
    // Truncations of a real file at many points.
    for cut in (0..good.len()).step_by(good.len() / 40) {
        assert!(load_bytes(&good[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn storage_declaring_more_than_the_data_is_an_error() {
    // Zip: the pickle declares 1e9 floats, the entry holds 2.
    let pkl = dict_pickle(|p| {
        p.str("w").tensor("FloatStorage", "0", 1_000_000_000, 0, &[2], &[1]);
    });
    let zip = torch_zip(&pkl, "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    let err = load_bytes(&zip).unwrap_err();
    assert!(matches!(err, WeightsError::Truncated { .. }), "{err}");

    // Legacy: a huge element count in the storage header.
    let pkl = dict_pickle(|p| {
        p.str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
    });
    let mut file = legacy_file(&pkl, &[("0", 4, f32_bytes(&[1.0, 2.0]))]);
    let at = file.len() - 16;
    file[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(load_bytes(&file).is_err());

    // A tensor reading past its storage.
    let pkl = dict_pickle(|p| {
        p.str("w").tensor("FloatStorage", "0", 2, 1, &[2], &[1]);
    });
    let zip = torch_zip(&pkl, "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    assert!(matches!(load_bytes(&zip), Err(WeightsError::Malformed { .. })));

    // A broadcast view that would materialise 2^40 elements from one float.
    let pkl = dict_pickle(|p| {
        p.str("w").tensor("FloatStorage", "0", 1, 0, &[1 << 20, 1 << 20], &[0, 0]);
    });
    let zip = torch_zip(&pkl, "little", &[("0", f32_bytes(&[1.0]))]);
    assert!(matches!(load_bytes(&zip), Err(WeightsError::Malformed { .. })));

    // A storage missing from the archive.
    let pkl = dict_pickle(|p| {
        p.str("w").tensor("FloatStorage", "7", 2, 0, &[2], &[1]);
    });
    let zip = torch_zip(&pkl, "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    assert!(matches!(load_bytes(&zip), Err(WeightsError::Malformed { .. })));
}

#[test]
fn big_endian_archives_are_refused() {
    let pkl = dict_pickle(|p| {
        p.str("w").tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
    });
    let zip = torch_zip(&pkl, "big", &[("0", f32_bytes(&[1.0]))]);
    let err = load_bytes(&zip).unwrap_err();
    assert!(err.to_string().contains("big-endian"), "{err}");
}

#[test]
fn unknown_opcode_names_byte_and_offset() {
    let mut p = Pickle::new();
    p.op(b'}').op(0xfe);
    let zip = torch_zip(&p.stop(), "little", &[]);
    let err = load_bytes(&zip).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::Malformed { .. }) && msg.contains("0xfe") && msg.contains("offset 3"), "{msg}");
}

#[test]
fn shared_containers_cannot_multiply_memory() {
    // D0 = {"w": t}; D(k+1) = {"a": Dk, "b": Dk}: 2^30 paths from a few hundred bytes.
    let mut p = Pickle::new();
    p.op(b'}').mark().str("w").tensor("FloatStorage", "0", 1, 0, &[1], &[1]).op(b'u');
    p.op(b'r').0.extend(0u32.to_le_bytes());
    for k in 0..30u32 {
        p.op(b'}').mark().str("a").op(b'j').0.extend(k.to_le_bytes());
        p.str("b").op(b'j').0.extend(k.to_le_bytes());
        p.op(b'u').op(b'r').0.extend((k + 1).to_le_bytes());
    }
    let zip = torch_zip(&p.stop(), "little", &[("0", f32_bytes(&[1.0]))]);
    let err = load_bytes(&zip).unwrap_err();
    assert!(err.to_string().contains("same containers"), "{err}");

    // One empty tensor referenced two million times from a list.
    let mut p = Pickle::new();
    p.op(b'}').mark().str("l").op(b']').mark();
    p.tensor("FloatStorage", "0", 0, 0, &[0, 1, 1, 1], &[1, 1, 1, 1]).op(b'q').op(0);
    for _ in 0..2_000_000 {
        p.op(b'h').op(0);
    }
    p.op(b'e').op(b'u');
    let zip = torch_zip(&p.stop(), "little", &[("0", vec![])]);
    let err = load_bytes(&zip).unwrap_err();
    assert!(err.to_string().contains("materialise far more"), "{err}");

    // set(L) of a 100k-element list, repeated 100k times.
    let mut p = Pickle::new();
    p.op(b']').mark();
    for _ in 0..100_000 {
        p.op(b'N');
    }
    p.op(b'e').op(b'q').op(0).op(b'(');
    for _ in 0..100_000 {
        p.global("builtins", "set").op(b'h').op(0).op(0x85).op(b'R').op(b'0');
    }
    let zip = torch_zip(&p.stop(), "little", &[]);
    let err = load_bytes(&zip).unwrap_err();
    assert!(err.to_string().contains("decompression bomb"), "{err}");
}
