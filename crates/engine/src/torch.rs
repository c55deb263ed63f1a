//! PyTorch state_dict names for burn modules, and strict loading of a state_dict into them.
//!
//! Modules name their fields after torchvision's, with three conventions where Rust or burn
//! can't spell PyTorch's names directly:
//! - a field `_N` stands for the Sequential index `N` (`_0` → `0`);
//! - enum variants (heterogeneous Sequentials) add no path segment;
//! - burn's `LayerNorm` calls its affine parameters `gamma`/`beta` (PyTorch: `weight`/`bias`),
//!   and burn's `Linear` stores its weight transposed (`[in, out]`; PyTorch `[out, in]`).
//!
//! Anything else a model needs (ViT's `encoder_layer_N`) goes through [`TorchModel::torch_key`].

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use deeptune_weights::{HostTensor, StateDict, Values};

/// A model whose parameters load from, and are named like, a PyTorch checkpoint.
pub trait TorchModel: Module + Sized {
    /// Rewrites a path built by the generic rules into the PyTorch key, for the names the
    /// generic rules can't express.
    fn torch_key(path: String) -> String {
        path
    }

    /// Keys (prefixes) of the classification head, replaced when fine-tuning for new classes.
    fn head_prefixes() -> &'static [&'static str];
}

/// What kind of tensor a parameter is, for naming and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Same shape and layout as in PyTorch.
    Same,
    /// burn `Linear.weight`: PyTorch's transpose.
    Transposed,
}

/// Tracks the module path while a visitor or mapper walks a module.
#[derive(Default)]
struct PathTracker {
    /// (segment, container type of the struct or enum that holds it)
    stack: Vec<(String, String)>,
}

impl PathTracker {
    fn enter(&mut self, name: &str, container: &str) {
        self.stack.push((name.to_string(), container.to_string()));
    }

    fn exit(&mut self) {
        self.stack.pop();
    }

    /// The PyTorch key and layout of the parameter at the current path.
    fn key<M: TorchModel>(&self) -> (String, Layout) {
        let mut segments: Vec<String> = Vec::with_capacity(self.stack.len());
        let mut layout = Layout::Same;
        let last = self.stack.len().saturating_sub(1);
        for (i, (name, container)) in self.stack.iter().enumerate() {
            if container.starts_with("Enum:") {
                continue;
            }
            let mut segment = match name.strip_prefix('_') {
                Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) => rest.to_string(),
                _ => name.clone(),
            };
            if i == last {
                match (container.as_str(), name.as_str()) {
                    ("Struct:LayerNorm", "gamma") => segment = "weight".into(),
                    ("Struct:LayerNorm", "beta") => segment = "bias".into(),
                    ("Struct:Linear", "weight") => layout = Layout::Transposed,
                    _ => {}
                }
            }
            segments.push(segment);
        }
        (M::torch_key(segments.join(".")), layout)
    }

    fn in_batch_norm(&self) -> bool {
        self.stack.last().is_some_and(|(_, c)| c == "Struct:BatchNorm2d")
    }
}

fn torch_shape(shape: &[usize], layout: Layout) -> Vec<usize> {
    match layout {
        Layout::Same => shape.to_vec(),
        Layout::Transposed => shape.iter().rev().copied().collect(),
    }
}

/// Where a float tensor sits: its PyTorch key, its layout, and whether it is a BatchNorm's.
struct Place {
    key: String,
    layout: Layout,
    in_batch_norm: bool,
}

/// What a walk over a model does at each float tensor, given where it sits. The path tracking
/// lives once, in [`Keyed`]; each walk below only says what it does at a tensor.
trait VisitKeyed {
    fn float<const D: usize>(&mut self, place: Place, param: &Param<Tensor<D>>);
}

/// The same for walks that change the tensors (and training flags).
trait MapKeyed {
    fn float<const D: usize>(&mut self, place: Place, param: Param<Tensor<D>>) -> Param<Tensor<D>>;
    fn flag(&mut self, _place: Place, flag: Param<burn::module::Flag>) -> Param<burn::module::Flag> {
        flag
    }
}

/// Adapts a [`VisitKeyed`] or [`MapKeyed`] to burn's visitor and mapper traits.
struct Keyed<M, W> {
    path: PathTracker,
    walk: W,
    _model: std::marker::PhantomData<M>,
}

impl<M: TorchModel, W> Keyed<M, W> {
    fn new(walk: W) -> Self {
        Keyed { path: PathTracker::default(), walk, _model: std::marker::PhantomData }
    }

    fn place(&self) -> Place {
        let (key, layout) = self.path.key::<M>();
        Place { key, layout, in_batch_norm: self.path.in_batch_norm() }
    }
}

impl<M: TorchModel, W: VisitKeyed> ModuleVisitor for Keyed<M, W> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let place = self.place();
        self.walk.float(place, param);
    }
}

impl<M: TorchModel, W: MapKeyed> ModuleMapper for Keyed<M, W> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let place = self.place();
        self.walk.float(place, param)
    }
    fn map_flag(&mut self, flag: Param<burn::module::Flag>) -> Param<burn::module::Flag> {
        let place = self.place();
        self.walk.flag(place, flag)
    }
}

/// A tensor in PyTorch's layout, as host floats.
fn to_host<const D: usize>(mut tensor: Tensor<D>, layout: Layout) -> HostTensor {
    if layout == Layout::Transposed {
        tensor = tensor.transpose();
    }
    let shape = tensor.dims().to_vec();
    HostTensor::from_f32(shape, tensor.into_data().convert::<f32>().try_into_vec::<f32>().expect("float tensor"))
}

/// Lists keys and shapes (see [`state_dict_shapes`]).
struct NameCollector(Vec<(String, Vec<usize>)>);

impl VisitKeyed for NameCollector {
    fn float<const D: usize>(&mut self, place: Place, param: &Param<Tensor<D>>) {
        let shape = torch_shape(param.lazy_shape().dims::<D>().as_ref(), place.layout);
        let batch_norm_var = place.in_batch_norm && place.key.ends_with(".running_var");
        if batch_norm_var {
            self.0.push((place.key.clone(), shape));
            // PyTorch's BatchNorm also saves a step counter; it only matters when momentum is
            // None, which torchvision never uses, but its key is part of the state_dict.
            self.0.push((format!("{}.num_batches_tracked", place.key.trim_end_matches(".running_var")), vec![]));
        } else {
            self.0.push((place.key, shape));
        }
    }
}

/// Every state_dict key the model has, with PyTorch's shape, in module order. Builds nothing:
/// parameters are not initialised to answer.
pub fn state_dict_shapes<M: TorchModel>(model: &M) -> Vec<(String, Vec<usize>)> {
    let mut walk = Keyed::<M, _>::new(NameCollector(Vec::new()));
    model.visit(&mut walk);
    walk.walk.0
}

/// Which keys of a checkpoint may differ from the model (absent, extra or of another shape):
/// those under these prefixes, such as the classifier head when fine-tuning for new classes.
#[derive(Debug, Clone, Default)]
pub struct KeysAllowedToDiffer(pub Vec<String>);

impl KeysAllowedToDiffer {
    pub fn none() -> Self {
        KeysAllowedToDiffer(Vec::new())
    }

    pub fn prefixes(prefixes: &[&str]) -> Self {
        KeysAllowedToDiffer(prefixes.iter().map(|p| p.to_string()).collect())
    }

    fn allows(&self, key: &str) -> bool {
        self.0.iter().any(|p| key == p.trim_end_matches('.') || key.starts_with(p.as_str()))
    }
}

/// What loading found. A load succeeds only when all three lists are empty (outside the keys
/// allowed to differ).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (key, the model's shape, the checkpoint's shape)
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Keys that differed but were allowed to (left freshly initialised in the model).
    pub kept_fresh: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the checkpoint does not fit this model: {0}")]
    Mismatch(String),
    #[error("tensor {key:?} holds integers; a float parameter was expected")]
    NotFloat { key: String },
}

impl LoadReport {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        let list = |v: &[String]| {
            let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
            let more = if v.len() > 8 { format!(" and {} more", v.len() - 8) } else { String::new() };
            format!("{}{more}", shown.join(", "))
        };
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", list(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", list(&self.unexpected)));
        }
        if !self.mismatched.is_empty() {
            let shown: Vec<String> = self
                .mismatched
                .iter()
                .take(8)
                .map(|(k, model, ckpt)| format!("{k} (model {model:?}, checkpoint {ckpt:?})"))
                .collect();
            parts.push(format!("mis-shaped keys: {}", shown.join(", ")));
        }
        parts.join("; ")
    }
}

struct Loader<'a> {
    dict: &'a StateDict,
    allowed: &'a KeysAllowedToDiffer,
    used: BTreeSet<String>,
    report: LoadReport,
    error: Option<LoadError>,
}

impl MapKeyed for Loader<'_> {
    fn float<const D: usize>(&mut self, place: Place, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Place { key, layout, in_batch_norm } = place;
        if in_batch_norm && key.ends_with(".running_var") {
            self.used.insert(format!("{}.num_batches_tracked", key.trim_end_matches(".running_var")));
        }
        let model_shape = param.lazy_shape().dims::<D>().to_vec();
        let Some(source) = self.dict.get(&key) else {
            if self.allowed.allows(&key) {
                self.report.kept_fresh.push(key);
            } else {
                self.report.missing.push(key);
            }
            return param;
        };
        self.used.insert(key.clone());
        let expected = torch_shape(&model_shape, layout);
        if source.shape != expected {
            if self.allowed.allows(&key) {
                self.report.kept_fresh.push(key);
            } else {
                self.report.mismatched.push((key, expected, source.shape.clone()));
            }
            return param;
        }
        let Some(values) = float_values(source) else {
            self.error.get_or_insert(LoadError::NotFloat { key });
            return param;
        };
        let device = param.lazy_device();
        let mut tensor = Tensor::<D>::from_data(TensorData::new(values.to_vec(), source.shape.clone()), &device);
        if layout == Layout::Transposed {
            tensor = tensor.transpose();
        }
        self.report.loaded += 1;
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

fn float_values(tensor: &HostTensor) -> Option<&[f32]> {
    match &tensor.values {
        Values::Float(v) => Some(v),
        Values::Int(_) => None,
    }
}

/// Loads a state_dict into the model. Fails — naming the keys — when a key is missing,
/// unexpected or mis-shaped, unless `allowed` lets it differ (such parameters keep their fresh
/// initialisation).
pub fn load_state_dict<M: TorchModel>(
    model: M,
    dict: &StateDict,
    allowed: &KeysAllowedToDiffer,
) -> Result<(M, LoadReport), LoadError> {
    let mut walk =
        Keyed::<M, _>::new(Loader { dict, allowed, used: BTreeSet::new(), report: LoadReport::default(), error: None });
    let model = model.map(&mut walk);
    let loader = walk.walk;
    if let Some(error) = loader.error {
        return Err(error);
    }
    let mut report = loader.report;
    for key in dict.keys() {
        if !loader.used.contains(key) {
            if allowed.allows(key) {
                report.kept_fresh.push(key.to_string());
            } else {
                report.unexpected.push(key.to_string());
            }
        }
    }
    if !report.missing.is_empty() || !report.unexpected.is_empty() || !report.mismatched.is_empty() {
        return Err(LoadError::Mismatch(report.describe()));
    }
    Ok((model, report))
}

/// The model's parameters and buffers as a PyTorch-named state_dict (for export and tests).
pub fn to_state_dict<M: TorchModel>(model: &M) -> StateDict {
    struct Exporter(BTreeMap<String, HostTensor>);
    impl VisitKeyed for Exporter {
        fn float<const D: usize>(&mut self, place: Place, param: &Param<Tensor<D>>) {
            self.0.insert(place.key, to_host(param.val(), place.layout));
        }
    }
    let mut walk = Keyed::<M, _>::new(Exporter(BTreeMap::new()));
    // `valid()` folds running-statistics updates made during training forwards into the values
    // a visitor sees (burn keeps them per thread until synced).
    model.valid().visit(&mut walk);
    StateDict::from(walk.walk.0)
}

/// The gradient of every parameter that has one, PyTorch-named and laid out.
pub fn named_gradients<M: TorchModel>(model: &M, grads: &burn::tensor::Gradients) -> StateDict {
    struct GradCollector<'a>(&'a burn::tensor::Gradients, BTreeMap<String, HostTensor>);
    impl VisitKeyed for GradCollector<'_> {
        fn float<const D: usize>(&mut self, place: Place, param: &Param<Tensor<D>>) {
            if let Some(grad) = param.val().grad(self.0) {
                self.1.insert(place.key, to_host(grad, place.layout));
            }
        }
    }
    let mut walk = Keyed::<M, _>::new(GradCollector(grads, BTreeMap::new()));
    model.visit(&mut walk);
    StateDict::from(walk.walk.1)
}

/// Gradients given as a PyTorch-named state_dict (for example PyTorch's own), ready for a burn
/// optimizer step on `model`. Keys the model doesn't have are ignored.
pub fn gradients_from_state_dict<M: TorchModel>(
    model: &M,
    grads: &StateDict,
    device: &Device,
) -> burn::optim::GradientsParams {
    struct Registrar<'a>(&'a StateDict, &'a Device, burn::optim::GradientsParams);
    impl VisitKeyed for Registrar<'_> {
        fn float<const D: usize>(&mut self, place: Place, param: &Param<Tensor<D>>) {
            let Some(source) = self.0.get(&place.key) else { return };
            let Values::Float(values) = &source.values else { return };
            let mut tensor = Tensor::<D>::from_data(TensorData::new(values.clone(), source.shape.clone()), self.1);
            if place.layout == Layout::Transposed {
                tensor = tensor.transpose();
            }
            self.2.register(param.id, tensor);
        }
    }
    let mut walk = Keyed::<M, _>::new(Registrar(grads, device, burn::optim::GradientsParams::new()));
    model.visit(&mut walk);
    walk.walk.2
}

/// Parameters chosen by their PyTorch key and rank, as ids (for optimizer groups).
pub fn param_ids_where<M: TorchModel>(
    model: &M,
    select: impl FnMut(&str, usize) -> bool,
) -> Vec<burn::module::ParamId> {
    struct Selector<F>(F, Vec<burn::module::ParamId>);
    impl<F: FnMut(&str, usize) -> bool> VisitKeyed for Selector<F> {
        fn float<const D: usize>(&mut self, place: Place, param: &Param<Tensor<D>>) {
            // Running statistics are buffers, not parameters.
            let buffer = place.key.ends_with(".running_mean") || place.key.ends_with(".running_var");
            if !buffer && (self.0)(&place.key, D) {
                self.1.push(param.id);
            }
        }
    }
    let mut walk = Keyed::<M, _>::new(Selector(select, Vec::new()));
    model.visit(&mut walk);
    walk.walk.1
}

/// Freezes the parameters whose PyTorch key `frozen` selects: no gradients, and their
/// BatchNorms use running statistics (as PyTorch's `requires_grad_(False)` + `eval()` on a
/// frozen backbone).
pub fn freeze_where<M: TorchModel>(model: M, frozen: impl Fn(&str) -> bool) -> M {
    struct Freezer<F>(F);
    impl<F: Fn(&str) -> bool> MapKeyed for Freezer<F> {
        fn float<const D: usize>(&mut self, place: Place, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if (self.0)(&place.key) { param.set_require_grad(false) } else { param }
        }
        fn flag(&mut self, place: Place, flag: Param<burn::module::Flag>) -> Param<burn::module::Flag> {
            if (self.0)(&place.key) { flag.with_value(false) } else { flag }
        }
    }
    model.map(&mut Keyed::<M, _>::new(Freezer(frozen)))
}
