//! Conversions, views, wrappers and writing, on small hand-made files.

mod common;

use common::{Pickle, dict_pickle, f32_bytes, legacy_file, torch_zip};
use deeptune_weights::{
    DType, HostTensor, StateDict, Values, WeightsError, load_bytes, load_file, save_safetensors, to_safetensors_bytes,
};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};

fn st_bytes(tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn half_and_bfloat16_convert_to_f32() {
    let vals = [0.0f32, 1.0, -2.5, 0.333_251_95, 65504.0, -0.000_061_035_156];
    let h: Vec<u8> = vals.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    let bvals = [0.0f32, 1.0, -2.5, 3.140_625, 1.0e30, -1.0e-30];
    let b: Vec<u8> = bvals.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
    let bytes = st_bytes(vec![("h", Dtype::F16, vec![2, 3], h), ("b", Dtype::BF16, vec![6], b)]);
    let sd = load_bytes(&bytes).unwrap();

    let th = sd.get("h").unwrap();
    assert_eq!(th.shape, [2, 3]);
    assert_eq!(th.source_dtype, DType::F16);
    let expect: Vec<f32> = vals.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    assert_eq!(th.as_f32().unwrap(), expect.as_slice());
    assert_eq!(th.as_f32().unwrap()[..3], [0.0, 1.0, -2.5]);
    assert_eq!(th.as_f32().unwrap()[4], 65504.0);

    let tb = sd.get("b").unwrap();
    assert_eq!(tb.source_dtype, DType::BF16);
    let expect: Vec<f32> = bvals.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(tb.as_f32().unwrap(), expect.as_slice());
    assert_eq!(tb.as_f32().unwrap()[..4], [0.0, 1.0, -2.5, 3.140_625]);
}

#[test]
fn other_dtypes_convert() {
    let bytes = st_bytes(vec![
        ("f64", Dtype::F64, vec![2], [1.5f64, -1e-3].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ("i32", Dtype::I32, vec![2], [-7i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ("u8", Dtype::U8, vec![3], vec![0, 200, 255]),
        ("i8", Dtype::I8, vec![1], vec![0xff]),
        ("bool", Dtype::BOOL, vec![2], vec![1, 0]),
        ("scalar", Dtype::I64, vec![], 42i64.to_le_bytes().to_vec()),
        ("empty", Dtype::F32, vec![0, 4], vec![]),
    ]);
    let sd = load_bytes(&bytes).unwrap();
    assert_eq!(sd.get("f64").unwrap().as_f32().unwrap(), [1.5, -1e-3f64 as f32]);
    assert_eq!(sd.get("i32").unwrap().as_i64().unwrap(), [-7, 9]);
    assert_eq!(sd.get("u8").unwrap().as_i64().unwrap(), [0, 200, 255]);
    assert_eq!(sd.get("i8").unwrap().as_i64().unwrap(), [-1]);
    assert_eq!(sd.get("bool").unwrap().as_i64().unwrap(), [1, 0]);
    assert_eq!(sd.get("bool").unwrap().source_dtype, DType::Bool);
    assert_eq!(sd.get("scalar").unwrap().as_i64().unwrap(), [42]);
    assert_eq!(sd.get("empty").unwrap().numel(), 0);

    let bytes = st_bytes(vec![("c", Dtype::C64, vec![1], vec![0; 8])]);
    let err = load_bytes(&bytes).unwrap_err();
    assert!(matches!(err, WeightsError::UnsupportedDtype { ref tensor, .. } if tensor == "c"), "{err}");
}

#[test]
fn save_safetensors_round_trips() {
    let mut sd = StateDict::new();
    sd.insert("a.weight", HostTensor::from_f32(vec![2, 3], vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE, 0.0, -0.0]));
    sd.insert("a.num_batches_tracked", HostTensor::from_i64(vec![], vec![123]));
    sd.insert("b", HostTensor { shape: vec![2], values: Values::Float(vec![0.5, 0.25]), source_dtype: DType::F16 });
    sd.insert("flags", HostTensor { shape: vec![2], values: Values::Int(vec![1, 0]), source_dtype: DType::Bool });

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    save_safetensors(&sd, &path).unwrap();
    let back = load_file(&path).unwrap();
    assert_eq!(back.len(), 4);
    for (name, t) in sd.iter() {
        let b = back.get(name).unwrap();
        assert_eq!(b.shape, t.shape);
        assert_eq!(b.values, t.values);
        let expect = if t.as_f32().is_some() { DType::F32 } else { DType::I64 };
        assert_eq!(b.source_dtype, expect, "{name}");
    }
    assert_eq!(back.get("a.weight").unwrap().as_f32().unwrap()[5].to_bits(), (-0.0f32).to_bits());
    assert_eq!(load_bytes(&to_safetensors_bytes(&sd).unwrap()).unwrap(), back);

    // Overwriting replaces the file; no temporary files are left behind.
    sd.remove("b");
    save_safetensors(&sd, &path).unwrap();
    assert_eq!(load_file(&path).unwrap().len(), 3);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["out.safetensors"]);

    // A shape that does not match the values is an error and leaves the old file alone.
    sd.insert("bad", HostTensor::from_f32(vec![3], vec![1.0]));
    assert!(save_safetensors(&sd, &path).is_err());
    assert_eq!(load_file(&path).unwrap().len(), 3);

    // The real fixture round-trips bit for bit.
    let r18 = load_file(&common::fixture("resnet18_thin/weights.pth")).unwrap();
    let again = load_bytes(&to_safetensors_bytes(&r18).unwrap()).unwrap();
    assert_eq!(again, r18);
}

#[test]
fn zip_views_offsets_and_strides_are_materialised() {
    let storage: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let pkl = dict_pickle(|p| {
        // 2x3 transposed view of a 3x2 block: t[i][j] = s[j*2 + i]
        p.str("transposed").tensor("FloatStorage", "0", 8, 0, &[2, 3], &[1, 2]);
        // contiguous slice at offset 5
        p.str("tail").tensor("FloatStorage", "0", 8, 5, &[3], &[1]);
        // every other element, offset 1
        p.str("strided").tensor("FloatStorage", "0", 8, 1, &[4], &[2]);
        // broadcast (stride 0)
        p.str("expanded").tensor("FloatStorage", "0", 8, 7, &[2, 2], &[0, 0]);
        // size-1 dim with an odd stride
        p.str("col").tensor("FloatStorage", "0", 8, 2, &[1, 2], &[99, 1]);
        // int64 scalar
        p.str("count").tensor("LongStorage", "1", 1, 0, &[], &[]);
        p.str("empty").tensor("FloatStorage", "0", 8, 0, &[0, 3], &[3, 1]);
    });
    let zip = torch_zip(&pkl, "little", &[("0", f32_bytes(&storage)), ("1", 5i64.to_le_bytes().to_vec())]);
    let sd = load_bytes(&zip).unwrap();
    assert_eq!(sd.get("transposed").unwrap().as_f32().unwrap(), [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
    assert_eq!(sd.get("transposed").unwrap().shape, [2, 3]);
    assert_eq!(sd.get("tail").unwrap().as_f32().unwrap(), [5.0, 6.0, 7.0]);
    assert_eq!(sd.get("strided").unwrap().as_f32().unwrap(), [1.0, 3.0, 5.0, 7.0]);
    assert_eq!(sd.get("expanded").unwrap().as_f32().unwrap(), [7.0; 4]);
    assert_eq!(sd.get("col").unwrap().as_f32().unwrap(), [2.0, 3.0]);
    assert_eq!(sd.get("count").unwrap().as_i64().unwrap(), [5]);
    assert_eq!(sd.get("count").unwrap().source_dtype, DType::I64);
    assert_eq!(sd.get("empty").unwrap().shape, [0, 3]);
}

#[test]
fn legacy_storage_views_are_honoured() {
    // Two tensors over views of one root storage: ('storage', cls, root, 'cpu', numel, (view, off, size)).
    let mut p = Pickle::new();
    p.op(b'}').mark();
    for (name, view_key, off, size) in [("a", "v1", 2, 3), ("b", "v2", 5, 2)] {
        p.str(name).global("torch._utils", "_rebuild_tensor_v2").mark();
        p.mark().str("storage").global("torch", "HalfStorage").str("root").str("cpu").int(8);
        p.mark().str(view_key).int(off).int(size).tuple();
        p.tuple().op(b'Q');
        p.int(0).ints(&[size]).ints(&[1]).op(0x89).global("collections", "OrderedDict").op(b')').op(b'R');
        p.tuple().op(b'R');
    }
    p.op(b'u');
    let main = p.stop();
    let root: Vec<u8> = (0..8).flat_map(|i| f16::from_f32(i as f32).to_le_bytes()).collect();
    let sd = load_bytes(&legacy_file(&main, &[("root", 2, root.clone())])).unwrap();
    assert_eq!(sd.get("a").unwrap().as_f32().unwrap(), [2.0, 3.0, 4.0]);
    assert_eq!(sd.get("b").unwrap().as_f32().unwrap(), [5.0, 6.0]);
    assert_eq!(sd.get("a").unwrap().source_dtype, DType::F16);

    // A storage key list naming an undeclared storage is malformed.
    assert!(load_bytes(&legacy_file(&main, &[("other", 2, root)])).is_err());
}

#[test]
fn training_checkpoint_wrappers_are_unwrapped() {
    // {"epoch": 3, "state_dict": {"w": t}, "optimizer": {...}}
    let mut p = Pickle::new();
    p.op(b'}').mark();
    p.str("epoch").int(3);
    p.str("optimizer").op(b'}').mark().str("lr").int(1).op(b'u');
    p.str("state_dict").op(b'}').mark();
    p.str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
    p.op(b'u');
    p.op(b'u');
    let zip = torch_zip(&p.stop(), "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    let sd = load_bytes(&zip).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["w"]);

    // {"model": {"w": t}, "step": 1}
    let mut p = Pickle::new();
    p.op(b'}').mark().str("step").int(1).str("model").op(b'}').mark();
    p.str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
    p.op(b'u').op(b'u');
    let zip = torch_zip(&p.stop(), "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    assert_eq!(load_bytes(&zip).unwrap().keys().collect::<Vec<_>>(), ["w"]);

    // No wrapper key: nested dicts and lists are flattened with dots, other values skipped.
    let mut p = Pickle::new();
    p.op(b'}').mark().str("step").int(1).str("encoder").op(b'}').mark();
    p.str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
    p.op(b'u');
    p.str("heads").op(b']').mark();
    p.tensor("FloatStorage", "0", 2, 1, &[1], &[1]);
    p.op(b'e');
    p.op(b'u');
    let zip = torch_zip(&p.stop(), "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    let sd = load_bytes(&zip).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["encoder.w", "heads.0"]);
    assert_eq!(sd.get("heads.0").unwrap().as_f32().unwrap(), [2.0]);

    // A single tensor is not a state_dict.
    let mut p = Pickle::new();
    p.tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
    let zip = torch_zip(&p.stop(), "little", &[("0", f32_bytes(&[1.0, 2.0]))]);
    let err = load_bytes(&zip).unwrap_err();
    assert!(matches!(err, WeightsError::NotAStateDict { .. }), "{err}");
}

#[test]
fn ordered_dict_with_metadata_build_parameters_and_v3() {
    // OrderedDict() + SETITEMS + BUILD({"_metadata": OrderedDict()}), as torch saves module.state_dict().
    let mut p = Pickle::new();
    p.global("collections", "OrderedDict").op(b')').op(b'R').op(b'q').op(0).mark();
    // A Parameter wrapper around a tensor.
    p.str("p").global("torch._utils", "_rebuild_parameter").mark();
    p.tensor("BFloat16Storage", "0", 2, 0, &[2], &[1]);
    p.op(0x88).global("collections", "OrderedDict").op(b')').op(b'R').tuple().op(b'R');
    // _rebuild_tensor_v3(untyped storage, 0, (2,), (1,), False, OrderedDict(), torch.uint16)
    p.str("u16").global("torch._utils", "_rebuild_tensor_v3").mark();
    p.mark().str("storage").global("torch", "UntypedStorage").str("1").str("cpu").int(4).tuple().op(b'Q');
    p.int(0).ints(&[2]).ints(&[1]).op(0x89).global("collections", "OrderedDict").op(b')').op(b'R');
    p.global("torch", "uint16").tuple().op(b'R');
    p.op(b'u');
    p.op(b'}').mark().str("_metadata").global("collections", "OrderedDict").op(b')').op(b'R').op(b'u').op(b'b');
    let pkl = p.stop();
    let bf: Vec<u8> = [1.5f32, -3.0].iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
    let u16s: Vec<u8> = [1u16, 65535].iter().flat_map(|v| v.to_le_bytes()).collect();
    let zip = torch_zip(&pkl, "little", &[("0", bf), ("1", u16s)]);
    let sd = load_bytes(&zip).unwrap();
    assert_eq!(sd.get("p").unwrap().as_f32().unwrap(), [1.5, -3.0]);
    assert_eq!(sd.get("p").unwrap().source_dtype, DType::BF16);
    assert_eq!(sd.get("u16").unwrap().as_i64().unwrap(), [1, 65535]);
    assert_eq!(sd.get("u16").unwrap().source_dtype, DType::U16);
}

#[test]
fn unsupported_storage_dtype_is_reported_with_the_tensor_name() {
    let pkl = dict_pickle(|p| {
        p.str("z").tensor("ComplexFloatStorage", "0", 1, 0, &[1], &[1]);
    });
    let zip = torch_zip(&pkl, "little", &[("0", vec![0; 8])]);
    let err = load_bytes(&zip).unwrap_err();
    assert!(matches!(err, WeightsError::UnsupportedDtype { ref tensor, .. } if tensor == "z"), "{err}");
    assert!(err.to_string().contains("complex64"), "{err}");
}
