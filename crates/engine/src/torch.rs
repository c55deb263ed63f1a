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

struct NameCollector<M> {
    path: PathTracker,
    out: Vec<(String, Vec<usize>)>,
    _model: std::marker::PhantomData<M>,
}

impl<M: TorchModel> ModuleVisitor for NameCollector<M> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (key, layout) = self.path.key::<M>();
        let shape = torch_shape(param.lazy_shape().dims::<D>().as_ref(), layout);
        let batch_norm_var = self.path.in_batch_norm() && key.ends_with(".running_var");
        self.out.push((key.clone(), shape));
        if batch_norm_var {
            // PyTorch's BatchNorm also saves a step counter; it only matters when momentum is
            // None, which torchvision never uses, but its key is part of the state_dict.
            self.out.push((format!("{}.num_batches_tracked", key.trim_end_matches(".running_var")), vec![]));
        }
    }
}

/// Every state_dict key the model has, with PyTorch's shape, in module order. Builds nothing:
/// parameters are not initialised to answer.
pub fn state_dict_shapes<M: TorchModel>(model: &M) -> Vec<(String, Vec<usize>)> {
    let mut collector =
        NameCollector::<M> { path: PathTracker::default(), out: Vec::new(), _model: Default::default() };
    model.visit(&mut collector);
    collector.out
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

struct Loader<'a, M> {
    path: PathTracker,
    dict: &'a StateDict,
    allowed: &'a KeysAllowedToDiffer,
    used: BTreeSet<String>,
    report: LoadReport,
    error: Option<LoadError>,
    _model: std::marker::PhantomData<M>,
}

impl<M: TorchModel> ModuleMapper for Loader<'_, M> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (key, layout) = self.path.key::<M>();
        if self.path.in_batch_norm() && key.ends_with(".running_var") {
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
    let mut loader = Loader::<M> {
        path: PathTracker::default(),
        dict,
        allowed,
        used: BTreeSet::new(),
        report: LoadReport::default(),
        error: None,
        _model: Default::default(),
    };
    let model = model.map(&mut loader);
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
    struct Exporter<M> {
        path: PathTracker,
        out: BTreeMap<String, HostTensor>,
        _model: std::marker::PhantomData<M>,
    }
    impl<M: TorchModel> ModuleVisitor for Exporter<M> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, layout) = self.path.key::<M>();
            let mut tensor = param.val();
            if layout == Layout::Transposed {
                tensor = tensor.transpose();
            }
            let shape = tensor.dims().to_vec();
            let values = tensor.into_data().convert::<f32>().try_into_vec::<f32>().expect("float tensor");
            self.out.insert(key, HostTensor::from_f32(shape, values));
        }
    }
    let mut exporter = Exporter::<M> { path: PathTracker::default(), out: BTreeMap::new(), _model: Default::default() };
    // `valid()` folds running-statistics updates made during training forwards into the values
    // a visitor sees (burn keeps them per thread until synced).
    model.valid().visit(&mut exporter);
    StateDict::from(exporter.out)
}

/// The gradient of every parameter that has one, PyTorch-named and laid out.
pub fn named_gradients<M: TorchModel>(model: &M, grads: &burn::tensor::Gradients) -> StateDict {
    struct GradCollector<'a, M> {
        path: PathTracker,
        grads: &'a burn::tensor::Gradients,
        out: BTreeMap<String, HostTensor>,
        _model: std::marker::PhantomData<M>,
    }
    impl<M: TorchModel> ModuleVisitor for GradCollector<'_, M> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, layout) = self.path.key::<M>();
            let Some(mut grad) = param.val().grad(self.grads) else { return };
            if layout == Layout::Transposed {
                grad = grad.transpose();
            }
            let shape = grad.dims().to_vec();
            let values = grad.into_data().convert::<f32>().try_into_vec::<f32>().expect("float tensor");
            self.out.insert(key, HostTensor::from_f32(shape, values));
        }
    }
    let mut collector =
        GradCollector::<M> { path: PathTracker::default(), grads, out: BTreeMap::new(), _model: Default::default() };
    model.visit(&mut collector);
    StateDict::from(collector.out)
}

/// Gradients given as a PyTorch-named state_dict (for example PyTorch's own), ready for a burn
/// optimizer step on `model`. Keys the model doesn't have are ignored.
pub fn gradients_from_state_dict<M: TorchModel>(
    model: &M,
    grads: &StateDict,
    device: &Device,
) -> burn::optim::GradientsParams {
    struct Registrar<'a, M> {
        path: PathTracker,
        grads: &'a StateDict,
        device: &'a Device,
        out: burn::optim::GradientsParams,
        _model: std::marker::PhantomData<M>,
    }
    impl<M: TorchModel> ModuleVisitor for Registrar<'_, M> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, layout) = self.path.key::<M>();
            let Some(Values::Float(values)) = self.grads.get(&key).map(|t| &t.values) else { return };
            let shape = self.grads.get(&key).expect("present").shape.clone();
            let mut tensor = Tensor::<D>::from_data(TensorData::new(values.clone(), shape), self.device);
            if layout == Layout::Transposed {
                tensor = tensor.transpose();
            }
            self.out.register(param.id, tensor);
        }
    }
    let mut registrar = Registrar::<M> {
        path: PathTracker::default(),
        grads,
        device,
        out: burn::optim::GradientsParams::new(),
        _model: Default::default(),
    };
    model.visit(&mut registrar);
    registrar.out
}

/// Parameters chosen by their PyTorch key and rank, as ids (for optimizer groups).
pub fn param_ids_where<M: TorchModel>(
    model: &M,
    mut select: impl FnMut(&str, usize) -> bool,
) -> Vec<burn::module::ParamId> {
    struct Selector<'a, M, F> {
        path: PathTracker,
        select: &'a mut F,
        out: Vec<burn::module::ParamId>,
        _model: std::marker::PhantomData<M>,
    }
    impl<M: TorchModel, F: FnMut(&str, usize) -> bool> ModuleVisitor for Selector<'_, M, F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, _) = self.path.key::<M>();
            // Running statistics are buffers, not parameters.
            if key.ends_with(".running_mean") || key.ends_with(".running_var") {
                return;
            }
            if (self.select)(&key, D) {
                self.out.push(param.id);
            }
        }
    }
    let mut selector = Selector::<M, _> {
        path: PathTracker::default(),
        select: &mut select,
        out: Vec::new(),
        _model: Default::default(),
    };
    model.visit(&mut selector);
    selector.out
}

/// Freezes the parameters whose PyTorch key `frozen` selects: no gradients, and their
/// BatchNorms use running statistics (as PyTorch's `requires_grad_(False)` + `eval()` on a
/// frozen backbone).
pub fn freeze_where<M: TorchModel>(model: M, frozen: impl Fn(&str) -> bool) -> M {
    struct Freezer<M, F> {
        path: PathTracker,
        frozen: F,
        _model: std::marker::PhantomData<M>,
    }
    impl<M: TorchModel, F: Fn(&str) -> bool> ModuleMapper for Freezer<M, F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (key, _) = self.path.key::<M>();
            if (self.frozen)(&key) { param.set_require_grad(false) } else { param }
        }
        fn map_flag(&mut self, flag: Param<burn::module::Flag>) -> Param<burn::module::Flag> {
            let (key, _) = self.path.key::<M>();
            if (self.frozen)(&key) { flag.with_value(false) } else { flag }
        }
    }
    model.map(&mut Freezer::<M, _> { path: PathTracker::default(), frozen, _model: Default::default() })
}
