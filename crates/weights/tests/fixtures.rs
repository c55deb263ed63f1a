//! The real fixtures: the same resnet18 state_dict in three formats, the other models'
//! safetensors, and damaged copies of the .pth files.

mod common;

use common::{Rng, fixture, read_fixture, rezip, rezip_with, unzip};
use deeptune_weights::{DType, StateDict, Values, load_bytes, load_file};

fn assert_identical(a: &StateDict, b: &StateDict, what: &str) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}: keys differ");
    for (name, ta) in a.iter() {
        let tb = b.get(name).unwrap();
        assert_eq!(ta.shape, tb.shape, "{what}: shape of {name}");
        assert_eq!(ta.source_dtype, tb.source_dtype, "{what}: dtype of {name}");
        match (&ta.values, &tb.values) {
            (Values::Float(x), Values::Float(y)) => {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(bits(x) == bits(y), "{what}: values of {name} differ");
            }
            (Values::Int(x), Values::Int(y)) => assert_eq!(x, y, "{what}: values of {name}"),
            _ => panic!("{what}: value kinds of {name} differ"),
        }
    }
}

#[test]
fn resnet18_three_formats_are_identical() {
    let st = load_file(&fixture("resnet18_thin/weights.safetensors")).unwrap();
    let zip = load_file(&fixture("resnet18_thin/weights.pth")).unwrap();
    let legacy = load_file(&fixture("resnet18_thin/weights-legacy.pth")).unwrap();

    assert_eq!(st.len(), 122);
    assert_eq!(st.get("conv1.weight").unwrap().shape, [8, 3, 7, 7]);
    assert_eq!(st.get("fc.weight").unwrap().shape, [3, 64]);
    assert_eq!(st.get("fc.bias").unwrap().shape, [3]);
    assert_eq!(st.get("conv1.weight").unwrap().source_dtype, DType::F32);
    let nbt = st.get("bn1.num_batches_tracked").unwrap();
    assert!(nbt.shape.is_empty());
    assert_eq!(nbt.numel(), 1);
    assert_eq!(nbt.source_dtype, DType::I64);
    assert!(nbt.as_f32().is_none() && nbt.as_i64().unwrap().len() == 1);
    assert_eq!(st.keys().filter(|k| k.ends_with("num_batches_tracked")).count(), 20);
    for (name, t) in st.iter() {
        assert_eq!(t.values.len(), t.numel(), "{name}");
    }

    assert_identical(&st, &zip, "zip vs safetensors");
    assert_identical(&st, &legacy, "legacy vs safetensors");

    // load_bytes agrees with load_file.
    assert_identical(&st, &load_bytes(&read_fixture("resnet18_thin/weights.pth")).unwrap(), "zip bytes");
    assert_identical(&st, &load_bytes(&read_fixture("resnet18_thin/weights-legacy.pth")).unwrap(), "legacy bytes");
}

#[test]
fn all_safetensors_fixtures_load() {
    for (model, count) in
        [("resnet50_thin", 320), ("mobilenet_v2_w025", 314), ("efficientnet_b0_w025", 360), ("vit_tiny", 32)]
    {
        let sd = load_file(&fixture(&format!("{model}/weights.safetensors"))).unwrap();
        assert_eq!(sd.len(), count, "{model}");
        for (name, t) in sd.iter() {
            assert_eq!(t.values.len(), t.numel(), "{model} {name}");
            let expect_int = name.ends_with("num_batches_tracked");
            assert_eq!(t.as_i64().is_some(), expect_int, "{model} {name}");
        }
    }
    let r50 = load_file(&fixture("resnet50_thin/weights.safetensors")).unwrap();
    assert_eq!(r50.get("fc.weight").unwrap().shape, [3, 256]);
}

fn cut_points(len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..64).collect();
    cuts.extend((0..50).map(|i| i * len / 50));
    cuts.push(len - 1);
    cuts
}

#[test]
fn truncated_pth_files_fail_cleanly() {
    for file in ["resnet18_thin/weights.pth", "resnet18_thin/weights-legacy.pth"] {
        let bytes = read_fixture(file);
        for cut in cut_points(bytes.len()) {
            let r = load_bytes(&bytes[..cut]);
            assert!(r.is_err(), "{file} cut at {cut} loaded");
        }
    }
    // A cut-off zip (its directory is at the end) and cuts inside the legacy file's storage area
    // give a truncation error.
    let bytes = read_fixture("resnet18_thin/weights.pth");
    let err = load_bytes(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, deeptune_weights::WeightsError::Truncated { .. }), "{err}");
    let bytes = read_fixture("resnet18_thin/weights-legacy.pth");
    let err = load_bytes(&bytes[..bytes.len() - 3]).unwrap_err();
    assert!(matches!(err, deeptune_weights::WeightsError::Truncated { .. }), "{err}");
}

#[test]
fn truncated_file_on_disk_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = read_fixture("resnet18_thin/weights.pth");
    for cut in [0, 4, 100, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.path().join("cut.pth");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(load_file(&p).is_err(), "cut at {cut}");
    }
    let err = load_file(&dir.path().join("missing.pth")).unwrap_err();
    assert!(matches!(err, deeptune_weights::WeightsError::Io { .. }), "{err}");
}

#[test]
fn corrupted_legacy_pickles_never_panic() {
    let bytes = read_fixture("resnet18_thin/weights-legacy.pth");
    let pickle_end = 14_000; // the pickles end at 13891; past that are the storages
    let mut rng = Rng(0x5eed);
    for _ in 0..400 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(pickle_end);
            b[i] = rng.next() as u8;
        }
        let _ = load_bytes(&b);
    }
}

#[test]
fn corrupted_zip_pickles_never_panic() {
    let entries = unzip(&read_fixture("resnet18_thin/weights.pth"));
    let pkl = entries.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap();
    let mut rng = Rng(0xfeed);
    for i in 0..60 {
        let mut e = entries.clone();
        let data = &mut e[pkl].1;
        if i % 3 == 0 {
            let cut = rng.below(data.len());
            data.truncate(cut);
        } else {
            for _ in 0..1 + rng.below(4) {
                let j = rng.below(data.len());
                data[j] = rng.next() as u8;
            }
        }
        let _ = load_bytes(&rezip(&e));
    }
    // Unchanged entries re-zipped still load.
    assert_eq!(load_bytes(&rezip(&entries)).unwrap().len(), 122);
}

#[test]
fn deflated_archive_loads() {
    let bytes = read_fixture("resnet18_thin/weights.pth");
    let deflated = rezip_with(&unzip(&bytes), zip::CompressionMethod::Deflated);
    assert!(deflated.len() < bytes.len());
    assert_identical(&load_bytes(&bytes).unwrap(), &load_bytes(&deflated).unwrap(), "deflated");
}
