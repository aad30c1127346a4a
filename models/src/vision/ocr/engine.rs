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

use super::OcrError;

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
    pub(crate) fn load(
        name: &'static str,
        path: &Path,
        input: InputDims,
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
        let model = match model.into_typed().and_then(|m| m.into_decluttered()) {
            Ok(m) => Graph::Symbolic(m),
            Err(e) => {
                tracing::debug!(net = name, error = %format!("{e:#}"), "OCR net typed per shape");
                Graph::Inference(inference)
            }
        };
        Ok((
            Self {
                name,
                model,
                dims,
                plans: Mutex::new(HashMap::new()),
            },
            meta,
        ))
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
                .and_then(|m| m.into_typed()),
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
        let mut out = plan
            .run(tvec!(input.into_tvalue()))
            .map_err(|e| OcrError::Inference(format!("{}: {e:#}", self.name)))?;
        Ok(out.remove(0).into_arc_tensor())
    }
}
