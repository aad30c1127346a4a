//! The three ONNX networks as tract plans.
//!
//! tract optimises a graph for concrete input shapes (its convolution and matmul kernels are
//! chosen and packed per shape), and an optimised plan for a symbolic shape runs much slower. So
//! each network is decluttered once with symbolic batch/height/width, and an optimised plan is
//! built per concrete shape the first time that shape is seen and kept. Callers bucket their
//! shapes (detection sizes are multiples of 32, recognition widths are rounded up, batches are
//! bounded) so the cache stays small; it is cleared when it grows past [`MAX_PLANS`] anyway.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use super::{OcrError, kernels};

/// Plans kept per network; the shapes callers produce are few, this only bounds pathological
/// inputs.
const MAX_PLANS: usize = 48;

type Plan = TypedRunnableModel<TypedModel>;

/// A network's graph before shapes are fixed.
enum Graph {
    /// Decluttered once with symbolic dimensions; a plan concretises them.
    Symbolic(TypedModel),
    /// Graphs tract cannot type with symbolic dimensions (the classifier's reshapes read its
    /// batch size from the input): analysed from scratch per shape.
    Inference(InferenceModel),
}

/// One network: its graph and the optimised plans built so far.
pub(crate) struct Net {
    name: &'static str,
    model: Graph,
    /// The symbols of the input's dimensions that callers fill in (`None` where fixed), with
    /// their step.
    dims: [Option<(Symbol, usize)>; 4],
    plans: Mutex<HashMap<[usize; 4], Arc<Plan>>>,
    logits: bool,
}

/// One input dimension: fixed, or any multiple of a step. Declaring the step (`32·h` rather than
/// `h`) lets tract prove that the network's downsampled and upsampled branches line up, which it
/// cannot for an arbitrary size.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim {
    Fixed(usize),
    MultipleOf(usize),
}

pub(crate) type InputDims = [Dim; 4];

impl Net {
    /// Loads `path`, returning the graph and the ONNX metadata (`key -> value`).
    ///
    /// With `strip_softmax`, a softmax ending the graph is cut off so the net returns logits:
    /// tract's softmax is scalar code, and over the recognizer's 18710 classes at every time step
    /// it was a third of the recognition time, while CTC needs only the argmax (and the winning
    /// class's probability, computed by the caller where a character is kept).
    pub(crate) fn load(
        name: &'static str,
        path: &Path,
        input: InputDims,
        strip_softmax: bool,
    ) -> Result<(Self, HashMap<String, String>), OcrError> {
        let merr = |e: TractError| OcrError::Model(format!("{}: {e:#}", path.display()));
        // The exported graphs declare intermediate shapes with their own symbols
        // (`DynamicDimension.0`…) that cannot unify with the input fact set below; tract infers
        // every shape itself.
        let onnx = tract_onnx::onnx().with_ignore_output_shapes(true);
        let mut proto = onnx.proto_model_for_path(path).map_err(merr)?;
        if let Some(graph) = proto.graph.as_mut() {
            graph.value_info.clear();
        }
        let meta = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let inference = onnx.model_for_proto_model(&proto).map_err(merr)?;
        let mut model = inference.clone();
        let syms = ["n", "c", "h", "w"];
        let dims: [Option<(Symbol, usize)>; 4] = std::array::from_fn(|i| match input[i] {
            Dim::Fixed(_) => None,
            Dim::MultipleOf(k) => Some((model.sym(syms[i]), k)),
        });
        let shape: Vec<TDim> = (0..4)
            .map(|i| match (&dims[i], input[i]) {
                (Some((s, k)), _) => TDim::from(s.clone()) * *k as i64,
                (None, Dim::Fixed(v)) => TDim::from(v as i64),
                (None, Dim::MultipleOf(_)) => unreachable!("a symbol per step"),
            })
            .collect();
        model = model
            .with_input_fact(0, f32::fact(shape).into())
            .map_err(merr)?;
        let mut logits = false;
        let model = match model.into_typed().and_then(|m| m.into_decluttered()) {
            Ok(m) => {
                let m = if strip_softmax && ends_in_softmax(&m) {
                    logits = true;
                    without_final_softmax(m).map_err(merr)?
                } else {
                    m
                };
                let resizes = kernels::nearest_floor_resizes(&proto);
                Graph::Symbolic(match kernels::accelerate(m.clone(), &resizes) {
                    Ok(fast) => fast,
                    Err(e) => {
                        tracing::warn!(net = name, error = %format!("{e:#}"), "OCR kernels not used");
                        m
                    }
                })
            }
            Err(e) => {
                tracing::debug!(net = name, error = %format!("{e:#}"), "OCR net typed per shape");
                Graph::Inference(inference)
            }
        };
        Ok((
            Self {
                logits,
                name,
                model,
                dims,
                plans: Mutex::new(HashMap::new()),
            },
            meta,
        ))
    }

    /// Whether the graph now ends in logits (its final softmax was cut off).
    pub(crate) fn outputs_logits(&self) -> bool {
        self.logits
    }

    /// The optimised plan for an input of `shape`, built on first use.
    fn plan(&self, shape: [usize; 4]) -> Result<Arc<Plan>, OcrError> {
        if let Some(p) = self.plans.lock().expect("plan cache").get(&shape) {
            return Ok(p.clone());
        }
        // Built outside the lock: a second thread asking for the same new shape builds it twice,
        // which is cheaper than serialising every inference behind one optimisation.
        let mut values = SymbolValues::default();
        for (dim, v) in self.dims.iter().zip(shape) {
            if let Some((sym, k)) = dim {
                if v % k != 0 {
                    return Err(OcrError::Inference(format!(
                        "{}: input {shape:?} is not a multiple of {k}",
                        self.name
                    )));
                }
                values = values.with(sym, (v / k) as i64);
            }
        }
        let typed = match &self.model {
            Graph::Symbolic(m) => m.concretize_dims(&values),
            Graph::Inference(m) => m
                .clone()
                .with_input_fact(0, f32::fact(shape).into())
                .and_then(|m| m.into_typed())
                .and_then(|m| m.into_decluttered())
                .map(|m| {
                    // The classifier has no resizes; its convolutions are what gains.
                    kernels::accelerate(m.clone(), &Default::default()).unwrap_or_else(|e| {
                        tracing::warn!(net = self.name, error = %format!("{e:#}"), "OCR kernels not used");
                        m
                    })
                }),
        };
        let plan = typed
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map(Arc::new)
            .map_err(|e| OcrError::Model(format!("{} for {shape:?}: {e:#}", self.name)))?;
        tracing::debug!(net = self.name, ?shape, "OCR plan optimised");
        let mut plans = self.plans.lock().expect("plan cache");
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(shape, plan.clone());
        Ok(plan)
    }

    /// Runs the network on an NCHW `input` and returns its first output.
    pub(crate) fn run(&self, input: Tensor) -> Result<Arc<Tensor>, OcrError> {
        let shape: [usize; 4] = input
            .shape()
            .try_into()
            .map_err(|_| OcrError::Inference(format!("{}: input is not NCHW", self.name)))?;
        let plan = self.plan(shape)?;
        let mut state = SimpleState::new(&*plan)
            .map_err(|e| OcrError::Inference(format!("{}: {e:#}", self.name)))?;
        let out = state.run_plan_with_eval(tvec!(input.into_tvalue()), |s, st, node, i| {
            clear_avx_upper();
            tract_onnx::tract_core::plan::eval(s, st, node, i)
        });
        clear_avx_upper();
        let mut out = out.map_err(|e| OcrError::Inference(format!("{}: {e:#}", self.name)))?;
        Ok(out.remove(0).into_arc_tensor())
    }
}

fn ends_in_softmax(model: &TypedModel) -> bool {
    model
        .output_outlets()
        .ok()
        .and_then(|o| o.first().copied())
        .is_some_and(|o| {
            model
                .node(o.node)
                .op_is::<tract_onnx::tract_core::ops::nn::Softmax>()
        })
}

/// The graph with its final softmax removed.
fn without_final_softmax(mut model: TypedModel) -> TractResult<TypedModel> {
    let out = model.output_outlets()?[0];
    let input = model.node(out.node).inputs[0];
    model.set_output_outlets(&[input])?;
    model.into_decluttered()
}

/// Clears the upper halves of the AVX registers (`vzeroupper`).
///
/// tract's x86-64 assembly kernels (AVX2/AVX-512 matrix products) return without doing so, and
/// until it is done every non-VEX SSE instruction that follows (all Rust code built for the
/// baseline target: tract's own element-wise ops, packing, im2col, and ours) pays a state
/// transition penalty. Measured on the recognizer: its attention softmax took 52 ms per batch
/// after a matmul and 1.6 ms with this before it. So it runs before and after every op.
#[inline]
fn clear_avx_upper() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX (checked just above); vzeroupper touches no memory.
        unsafe { vzeroupper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn vzeroupper() {
    std::arch::x86_64::_mm256_zeroupper()
}
