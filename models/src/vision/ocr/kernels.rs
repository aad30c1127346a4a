//! Kernels for the ops where tract's generic code, not arithmetic, dominated OCR time.
//!
//! Measured per op on the PP-OCRv6 graphs (release build, one core of the 2-core dev machine,
//! `scripts/bench-ocr.sh` inputs): on the 448×960 detector input, tract's `Resize` took 268 ms
//! and its depthwise convolution 223 ms of 946 ms, while the network's matmuls took 250 ms. The
//! nearest upsampling is a copy, and tract's depthwise path for 3×3 and 5×5 kernels walks an
//! iterator per output pixel. On a recognizer batch its attention softmax (ndarray index
//! iteration per row of a few hundred values) and depthwise convolutions were a quarter of the
//! time. These replacements compute the same sums in the same order (bias first, then the taps
//! row by row; softmax as `exp(x - max) · (1/Σ)`), over contiguous rows the compiler vectorises,
//! one channel plane per rayon task.
//!
//! Then the dense convolutions, which were most of what was left (a 6-line recognizer batch:
//! 448 of 715 ms in tract's matmuls and 57 ms in its `Im2col`): every group-1 convolution, and
//! every 1×1 convolution that tract declutters into an `EinSum` (fused with the bias `Add` that
//! follows it), runs on [`super::gemm`]'s kernels (AVX-512 on that machine). That batch then
//! took about 350 ms, against 290–340 ms for onnxruntime on one thread.
//!
//! [`accelerate`] swaps them into a decluttered graph before tract optimises it; anything they do
//! not cover exactly (other layouts, dilations, resize modes, axes) keeps tract's op.

use std::collections::HashSet;

use rayon::prelude::*;
use std::sync::Arc;
use tract_onnx::pb::ModelProto;

use super::gemm;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::{DataFormat, Softmax, SoftmaxExp, SoftmaxKind};

/// Below this many output values an op runs on the calling thread: a rayon split costs more.
const PARALLEL_MIN: usize = 1 << 14;

/// The names of the `Resize` nodes that are nearest-neighbour upsamplings with
/// `asymmetric` coordinates and `floor` rounding: with an integer scale these pick
/// `input[i / scale]`, which [`Upsample`] does. Defaults are ONNX's.
pub(crate) fn nearest_floor_resizes(proto: &ModelProto) -> HashSet<String> {
    let Some(graph) = proto.graph.as_ref() else {
        return HashSet::new();
    };
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Resize")
        .filter(|n| {
            let attr = |name: &str, default: &str| {
                n.attribute
                    .iter()
                    .find(|a| a.name == name)
                    .map(|a| String::from_utf8_lossy(&a.s).into_owned())
                    .unwrap_or_else(|| default.to_string())
            };
            attr("mode", "nearest") == "nearest"
                && attr("coordinate_transformation_mode", "half_pixel") == "asymmetric"
                && attr("nearest_mode", "round_prefer_floor") == "floor"
        })
        .map(|n| n.name.clone())
        .collect()
}

/// `model` with the ops these kernels cover replaced. `resizes` comes from
/// [`nearest_floor_resizes`] on the same graph.
pub(crate) fn accelerate(
    mut model: TypedModel,
    resizes: &HashSet<String>,
) -> TractResult<TypedModel> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(&first) = node.inputs.first() else {
            continue;
        };
        if model.outlet_fact(first)?.datum_type != f32::datum_type() {
            continue;
        }
        let mut fused = None;
        let replacement: Option<(Box<dyn TypedOp>, Vec<OutletId>)> = if let Some(conv) =
            node.op_as::<Conv>()
        {
            if DepthwiseConv::covers(conv) {
                Some((
                    Box::new(DepthwiseConv(conv.clone())) as _,
                    node.inputs.clone(),
                ))
            } else {
                DenseConv::for_conv(&model, node, conv)?
                    .map(|op| (Box::new(op) as _, vec![node.inputs[0]]))
            }
        } else if let Some(einsum) = node.op_as::<EinSum>() {
            if let Some((op, add)) = PointwiseConv::for_einsum(&model, node, einsum)? {
                // Fused with the bias `Add` that follows: one node replaces both.
                let mut patch = TypedModelPatch::default();
                let tap = patch.tap_model(&model, node.inputs[0])?;
                let out = patch.wire_node(&node.name, op, &[tap])?;
                patch.shunt_outside(&model, OutletId::new(add.unwrap_or(id), 0), out[0])?;
                fused = Some(patch);
            }
            None
        } else if let Some(softmax) = node.op_as::<Softmax>() {
            let rank = model.outlet_fact(node.inputs[0])?.rank();
            (softmax.kind == SoftmaxKind::Softmax(SoftmaxExp::Libc)
                && softmax.quant_output_dt.is_none()
                && *softmax.axes == [rank - 1])
            .then(|| (Box::new(LastAxisSoftmax) as _, node.inputs.clone()))
        } else if node.op.name() == "Resize" && resizes.contains(&node.name) {
            Upsample::for_resize(&model, node)?.map(|op| (Box::new(op) as _, vec![node.inputs[0]]))
        } else {
            None
        };
        if let Some(patch) = fused {
            patch.apply(&mut model)?;
        }
        if let Some((op, inputs)) = replacement {
            let node = model.node(id).clone();
            TypedModelPatch::replace_single_op(&model, &node, &inputs, op)?.apply(&mut model)?;
        }
    }
    model.into_compact()
}

/// Runs `f` on each output plane (`len` values) with its index, in parallel when the output is
/// big enough to pay for it.
fn per_plane(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if len == 0 {
        return;
    }
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, p)| f(i, p));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(i, p)| f(i, p));
    }
}

// --- depthwise convolution -----------------------------------------------------------------

/// A 2-D convolution with one kernel per channel (`group == channels`), NCHW or CHW, OIHW kernel, no
/// dilation. Keeps tract's `Conv` for the output shape and padding rules.
#[derive(Debug, Clone, Hash)]
struct DepthwiseConv(Conv);

impl DepthwiseConv {
    fn covers(conv: &Conv) -> bool {
        let spec = &conv.pool_spec;
        conv.q_params.is_none()
            && conv.group > 1
            && conv.group == spec.input_channels
            && conv.group == spec.output_channels
            && conv.kernel_fmt == KernelFormat::OIHW
            && matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
            && spec.kernel_shape.len() == 2
            && spec.dilations().iter().all(|&d| d == 1)
    }
}

impl Op for DepthwiseConv {
    fn name(&self) -> StaticName {
        "SandraDepthwiseConv".into()
    }
    op_as_typed_op!();
}

impl TypedOp for DepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }
    as_op!();
}

impl EvalOp for DepthwiseConv {
    fn is_stateless(&self) -> bool {
        true
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (input, kernel, bias) = args_3!(inputs);
        // tract drops a batch axis of 1 (CHW).
        let (n, c, h, w) = match *input.shape() {
            [n, c, h, w] => (n, c, h, w),
            [c, h, w] => (1, c, h, w),
            ref s => bail!("depthwise conv: input {s:?} is not NCHW or CHW"),
        };
        let spec = &self.0.pool_spec;
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let strides = spec.strides();
        let (sy, sx) = (strides[0], strides[1]);
        let pads = spec
            .padding
            .compute(&[h, w], &spec.kernel_shape, &[1, 1], &strides);
        let (oh, ow) = (pads[0].convoluted, pads[1].convoluted);
        let (pt, pl) = (pads[0].pad_before, pads[1].pad_before);
        let x = input.as_slice::<f32>()?;
        let k = kernel.as_slice::<f32>()?;
        let b = bias.as_slice::<f32>()?;
        ensure!(
            k.len() == c * kh * kw,
            "depthwise conv: kernel {:?}",
            kernel.shape()
        );
        ensure!(
            b.len() == c || b.len() == 1,
            "depthwise conv: bias {:?}",
            bias.shape()
        );
        let shape: TVec<usize> = if input.rank() == 4 {
            tvec![n, c, oh, ow]
        } else {
            tvec![c, oh, ow]
        };
        let mut output = Tensor::zero::<f32>(&shape)?;
        per_plane(output.as_slice_mut::<f32>()?, oh * ow, |plane, out| {
            let ch = plane % c;
            let x = &x[plane * h * w..][..h * w];
            let k = &k[ch * kh * kw..][..kh * kw];
            let bias = if b.len() == 1 { b[0] } else { b[ch] };
            for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
                row.fill(bias);
                for ky in 0..kh {
                    let Some(iy) = (oy * sy + ky).checked_sub(pt).filter(|&iy| iy < h) else {
                        continue;
                    };
                    let src = &x[iy * w..][..w];
                    for kx in 0..kw {
                        tap(row, src, k[ky * kw + kx], kx, pl, sx);
                    }
                }
            }
        });
        Ok(tvec!(output.into_tvalue()))
    }
}

/// Adds `weight · src[ox·stride + kx − pad]` to `row[ox]` wherever that index is inside `src`.
#[inline]
fn tap(row: &mut [f32], src: &[f32], weight: f32, kx: usize, pad: usize, stride: usize) {
    // First output column whose input column is ≥ 0, and one past the last that is < src.len().
    let first = pad.saturating_sub(kx).div_ceil(stride);
    let end = if src.len() + pad > kx {
        ((src.len() + pad - kx - 1) / stride + 1).min(row.len())
    } else {
        0
    };
    if first >= end {
        return;
    }
    let start = first * stride + kx - pad;
    if stride == 1 {
        let n = end - first;
        for (o, i) in row[first..end].iter_mut().zip(&src[start..start + n]) {
            *o += weight * i;
        }
    } else {
        for (o, i) in row[first..end]
            .iter_mut()
            .zip(src[start..].iter().step_by(stride))
        {
            *o += weight * i;
        }
    }
}

// --- dense convolution ----------------------------------------------------------------------

/// A 2-D convolution with `group == 1`, NCHW or CHW, OIHW kernel, no dilation, constant weights
/// and bias, computed by [`super::gemm`]. The weights are packed once, here.
#[derive(Debug, Clone)]
struct DenseConv {
    conv: Conv,
    packed: Arc<gemm::Packed>,
    /// The kernel's and bias's facts, for tract's output-shape rules.
    kernel: TypedFact,
    bias: TypedFact,
}

impl std::hash::Hash for DenseConv {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Nodes with equal convs and equal constant inputs are the same op.
        self.conv.hash(state);
        self.kernel.hash(state);
        self.bias.hash(state);
    }
}

impl DenseConv {
    fn for_conv(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Self>> {
        let spec = &conv.pool_spec;
        if conv.q_params.is_some()
            || conv.group != 1
            || conv.kernel_fmt != KernelFormat::OIHW
            || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
            || spec.kernel_shape.len() != 2
            || spec.dilations().iter().any(|&d| d != 1)
            || node.inputs.len() != 3
        {
            return Ok(None);
        }
        let kernel = model.outlet_fact(node.inputs[1])?.clone();
        let bias = model.outlet_fact(node.inputs[2])?.clone();
        let (Some(k), Some(b)) = (kernel.konst.clone(), bias.konst.clone()) else {
            return Ok(None);
        };
        if k.datum_type() != f32::datum_type() || b.datum_type() != f32::datum_type() {
            return Ok(None);
        }
        let (cout, cin) = (spec.output_channels, spec.input_channels);
        let depth = cin * spec.kernel_shape.iter().product::<usize>();
        let (k, b) = (k.as_slice::<f32>()?, b.as_slice::<f32>()?);
        if k.len() != cout * depth || (b.len() != cout && b.len() != 1) {
            return Ok(None);
        }
        Ok(Some(Self {
            conv: conv.clone(),
            packed: Arc::new(gemm::Packed::new(k, b, cout, depth)),
            kernel,
            bias,
        }))
    }
}

impl Op for DenseConv {
    fn name(&self) -> StaticName {
        "SandraDenseConv".into()
    }
    op_as_typed_op!();
}

impl TypedOp for DenseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.conv
            .output_facts(&[inputs[0], &self.kernel, &self.bias])
    }
    as_op!();
}

impl EvalOp for DenseConv {
    fn is_stateless(&self) -> bool {
        true
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (n, c, h, w) = match *input.shape() {
            [n, c, h, w] => (n, c, h, w),
            [c, h, w] => (1, c, h, w),
            ref s => bail!("dense conv: input {s:?} is not NCHW or CHW"),
        };
        let spec = &self.conv.pool_spec;
        ensure!(c == spec.input_channels, "dense conv: {c} input channels");
        let strides = spec.strides();
        let pads = spec
            .padding
            .compute(&[h, w], &spec.kernel_shape, &[1, 1], &strides);
        let g = gemm::Geometry {
            cin: c,
            cout: spec.output_channels,
            h,
            w,
            kh: spec.kernel_shape[0],
            kw: spec.kernel_shape[1],
            sy: strides[0],
            sx: strides[1],
            pt: pads[0].pad_before,
            pl: pads[1].pad_before,
            oh: pads[0].convoluted,
            ow: pads[1].convoluted,
        };
        let shape: TVec<usize> = if input.rank() == 4 {
            tvec![n, g.cout, g.oh, g.ow]
        } else {
            tvec![g.cout, g.oh, g.ow]
        };
        // SAFETY: f32 has no invalid bit patterns, and the kernel writes every value.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        gemm::conv(
            &g,
            &self.packed,
            n,
            input.as_slice::<f32>()?,
            output.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(output.into_tvalue()))
    }
}

/// A 1×1 convolution as tract declutters it: `EinSum` `NIHW,OI->NOHW`, or `IHW,OI->OHW` once
/// tract has dropped a batch axis of 1, or `IHW,OI->NOHW` where it dropped it from the input
/// only (the detector has those), with constant `OI` weights, computed by [`super::gemm`].
#[derive(Debug, Clone)]
struct PointwiseConv {
    packed: Arc<gemm::Packed>,
    cin: usize,
    cout: usize,
    /// The output has a batch axis of 1 that the input lacks.
    adds_batch: bool,
    weights: TypedFact,
}

impl std::hash::Hash for PointwiseConv {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.weights.hash(state);
        self.adds_batch.hash(state);
    }
}

impl PointwiseConv {
    fn for_einsum(
        model: &TypedModel,
        node: &TypedNode,
        einsum: &EinSum,
    ) -> TractResult<Option<(Self, Option<usize>)>> {
        let expr = einsum.axes.to_string();
        if einsum.q_params.is_some()
            || einsum.operating_dt != f32::datum_type()
            || node.inputs.len() != 2
            || !["NIHW,OI->NOHW", "IHW,OI->OHW", "IHW,OI->NOHW"].contains(&expr.as_str())
        {
            return Ok(None);
        }
        let adds_batch = expr == "IHW,OI->NOHW";
        let weights = model.outlet_fact(node.inputs[1])?.clone();
        let Some(w) = weights.konst.clone() else {
            return Ok(None);
        };
        let &[cout, cin] = w.shape() else {
            return Ok(None);
        };
        if w.datum_type() != f32::datum_type() {
            return Ok(None);
        }
        let bias = Self::bias_add(model, node, cout)?;
        let (b, add) = match &bias {
            Some((b, add)) => (b.as_slice::<f32>()?, Some(*add)),
            None => (&[0f32][..], None),
        };
        let weights = TypedFact::from(w.clone());
        Ok(Some((
            Self {
                packed: Arc::new(gemm::Packed::new(w.as_slice::<f32>()?, b, cout, cin)),
                cin,
                cout,
                adds_batch,
                weights,
            },
            add,
        )))
    }

    /// The per-channel constant that the einsum's only successor adds, and that `Add` node:
    /// tract fuses it into its matmul, and as a separate broadcasting `Add` it cost a fifth of
    /// a recognizer batch.
    fn bias_add(
        model: &TypedModel,
        node: &TypedNode,
        cout: usize,
    ) -> TractResult<Option<(Arc<Tensor>, usize)>> {
        let Some(next) = model.single_succ(node.id)? else {
            return Ok(None);
        };
        let Some(bin) = next.op_as::<TypedBinOp>() else {
            return Ok(None);
        };
        if bin.0.name() != "Add" || bin.1.is_some() || next.inputs.len() != 2 {
            return Ok(None);
        }
        let other = if next.inputs[0].node == node.id {
            next.inputs[1]
        } else {
            next.inputs[0]
        };
        let fact = model.outlet_fact(other)?;
        let out_rank = model.outlet_fact(next.id.into())?.rank();
        let Some(k) = fact.konst.clone() else {
            return Ok(None);
        };
        // Per channel: `[1,] O, 1, 1` against an output of the same rank.
        let per_channel = k.datum_type() == f32::datum_type()
            && k.rank() == out_rank
            && k.len() == cout
            && k.shape()[k.rank() - 3] == cout;
        Ok(per_channel.then_some((k, next.id)))
    }
}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "SandraPointwiseConv".into()
    }
    op_as_typed_op!();
}

impl TypedOp for PointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        let axis = shape.len() - 3;
        shape[axis] = self.cout.into();
        if self.adds_batch {
            shape.insert(0, 1.into());
        }
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

impl EvalOp for PointwiseConv {
    fn is_stateless(&self) -> bool {
        true
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (n, c, h, w) = match *input.shape() {
            [n, c, h, w] => (n, c, h, w),
            [c, h, w] => (1, c, h, w),
            ref s => bail!("pointwise conv: input {s:?} is not NCHW or CHW"),
        };
        ensure!(c == self.cin, "pointwise conv: {c} input channels");
        let g = gemm::Geometry {
            cin: c,
            cout: self.cout,
            h,
            w,
            kh: 1,
            kw: 1,
            sy: 1,
            sx: 1,
            pt: 0,
            pl: 0,
            oh: h,
            ow: w,
        };
        let mut shape: TVec<usize> = input.shape().into();
        let axis = shape.len() - 3;
        shape[axis] = self.cout;
        if self.adds_batch {
            shape.insert(0, 1);
        }
        // SAFETY: f32 has no invalid bit patterns, and the kernel writes every value.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        gemm::conv(
            &g,
            &self.packed,
            n,
            input.as_slice::<f32>()?,
            output.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(output.into_tvalue()))
    }
}

// --- softmax ------------------------------------------------------------------------------

/// Softmax over the last axis of an f32 tensor, as tract's `Libc` kind computes it.
#[derive(Debug, Clone, Hash)]
struct LastAxisSoftmax;

impl Op for LastAxisSoftmax {
    fn name(&self) -> StaticName {
        "SandraSoftmax".into()
    }
    op_as_typed_op!();
}

impl TypedOp for LastAxisSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }
    as_op!();
}

impl EvalOp for LastAxisSoftmax {
    fn is_stateless(&self) -> bool {
        true
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let len = *input.shape().last().context("softmax of a scalar")?;
        let mut output = input.into_tensor();
        per_plane(output.as_slice_mut::<f32>()?, len, |_, row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let r = sum.recip();
            row.iter_mut().for_each(|v| *v *= r);
        });
        Ok(tvec!(output.into_tvalue()))
    }
}

// --- nearest upsampling -------------------------------------------------------------------

/// NCHW nearest-neighbour upsampling of H and W by integer factors: `out[y][x] = in[y/fy][x/fx]`.
#[derive(Debug, Clone, Hash)]
struct Upsample {
    fy: usize,
    fx: usize,
}

impl Upsample {
    /// The op for a `Resize` node whose scales are a constant `[1, 1, fy, fx]`.
    fn for_resize(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Self>> {
        if model.outlet_fact(node.inputs[0])?.rank() != 4 {
            return Ok(None);
        }
        // ONNX Resize 11+: (X, roi, scales[, sizes]); 10: (X, scales).
        let scales = node
            .inputs
            .get(if node.inputs.len() >= 3 { 2 } else { 1 })
            .map(|&o| model.outlet_fact(o))
            .transpose()?
            .and_then(|f| f.konst.clone());
        let Some(scales) = scales else {
            return Ok(None);
        };
        let Ok(s) = scales
            .cast_to::<f32>()
            .map(|s| s.as_slice::<f32>().map(<[f32]>::to_vec))
        else {
            return Ok(None);
        };
        let Ok(s) = s else { return Ok(None) };
        let whole = |v: f32| (v >= 1.0 && v.fract() == 0.0 && v <= 64.0).then_some(v as usize);
        Ok(match s[..] {
            [a, b, y, x] if a == 1.0 && b == 1.0 => {
                whole(y).zip(whole(x)).map(|(fy, fx)| Self { fy, fx })
            }
            _ => None,
        })
    }
}

impl Op for Upsample {
    fn name(&self) -> StaticName {
        "SandraUpsample".into()
    }
    op_as_typed_op!();
}

impl TypedOp for Upsample {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        shape[2] = shape[2].clone() * self.fy as i64;
        shape[3] = shape[3].clone() * self.fx as i64;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
    as_op!();
}

impl EvalOp for Upsample {
    fn is_stateless(&self) -> bool {
        true
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[n, c, h, w] = input.shape() else {
            bail!("upsample: input {:?} is not NCHW", input.shape());
        };
        let (oh, ow) = (h * self.fy, w * self.fx);
        let x = input.as_slice::<f32>()?;
        let mut output = Tensor::zero::<f32>(&[n, c, oh, ow])?;
        per_plane(output.as_slice_mut::<f32>()?, oh * ow, |plane, out| {
            let x = &x[plane * h * w..][..h * w];
            for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
                let src = &x[(oy / self.fy) * w..][..w];
                for (chunk, &v) in row.chunks_exact_mut(self.fx).zip(src) {
                    chunk.fill(v);
                }
            }
        });
        Ok(tvec!(output.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    //! Each kernel against tract's own op on the same graph and random data: the outputs agree,
    //! and the graph really ran the kernel (a replacement that silently did not happen would
    //! compare tract with itself).

    use super::*;
    use tract_onnx::pb::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
        TypeProto, ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType,
        type_proto,
    };
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let len = shape.iter().product();
        let v: Vec<f32> = (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_shape(shape, &v).unwrap()
    }

    fn run(model: TypedModel, input: &Tensor) -> Tensor {
        let out = model
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec!(input.clone().into_tvalue()))
            .unwrap();
        out[0].clone().into_tensor()
    }

    fn ops(model: &TypedModel) -> Vec<String> {
        model
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect()
    }

    /// Equal up to rounding: sums of dozens of products come out in a different order (and with
    /// fused multiply-adds) in the dense kernels, so the bound is relative past magnitude 1.
    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}: shapes");
        let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{what}: differs by {worst}");
    }

    /// A depthwise convolution graph: `shape` is NCHW (or CHW with `chw`).
    fn dw_graph(
        shape: &[usize],
        k: (usize, usize),
        stride: usize,
        pad: [usize; 4],
        dil: usize,
    ) -> TypedModel {
        let c = shape[shape.len() - 3];
        conv_graph(shape, c, c, k, stride, pad, dil)
    }

    /// A convolution graph with `cout` outputs in `group` groups.
    fn conv_graph(
        shape: &[usize],
        cout: usize,
        group: usize,
        k: (usize, usize),
        stride: usize,
        pad: [usize; 4],
        dil: usize,
    ) -> TypedModel {
        let chw = shape.len() == 3;
        let c = shape[shape.len() - 3];
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let kernel = m
            .add_const("k", random(&[cout, c / group, k.0, k.1], 7))
            .unwrap();
        let bias = m.add_const("b", random(&[cout], 9)).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: if chw {
                    DataFormat::CHW
                } else {
                    DataFormat::NCHW
                },
                kernel_shape: tvec![k.0, k.1],
                padding: PaddingSpec::Explicit(tvec![pad[0], pad[1]], tvec![pad[2], pad[3]]),
                dilations: Some(tvec![dil, dil]),
                strides: Some(tvec![stride, stride]),
                input_channels: c,
                output_channels: cout,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        };
        let out = m.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
        m.set_output_outlets(&out).unwrap();
        m
    }

    /// Whether the graph runs our op.
    fn assert_dense_kernel(model: &TypedModel, op: &str, what: &str) {
        assert!(
            ops(model).iter().any(|o| o == op),
            "{what}: {:?}",
            ops(model)
        );
    }

    type DenseCase = (&'static [usize], usize, (usize, usize), usize, [usize; 4]);

    #[test]
    fn dense_convolution_matches_tract() {
        // (input shape, output channels, kernel, stride, padding top/left/bottom/right): the
        // recognizer's stem (3×3 stride 2, 2×2 padded on one side), a plain 3×3, a 1×1 left
        // as a convolution, a CHW input, channel and pixel counts off the kernel's tiles, and
        // one big enough to run in parallel.
        let cases: &[DenseCase] = &[
            (&[2, 3, 12, 20], 16, (3, 3), 2, [1, 1, 1, 1]),
            (&[1, 6, 9, 11], 7, (2, 2), 1, [0, 0, 1, 1]),
            (&[1, 4, 10, 35], 25, (3, 3), 1, [1, 1, 1, 1]),
            (&[2, 8, 5, 7], 13, (1, 1), 1, [0, 0, 0, 0]),
            (&[5, 9, 13], 12, (3, 3), 1, [1, 1, 1, 1]),
            (&[1, 8, 64, 96], 24, (3, 3), 1, [1, 1, 1, 1]),
        ];
        for (i, &(shape, cout, k, stride, pad)) in cases.iter().enumerate() {
            let model = conv_graph(shape, cout, 1, k, stride, pad, 1);
            let fast = accelerate(model.clone(), &HashSet::new()).unwrap();
            assert_dense_kernel(&fast, "SandraDenseConv", &format!("case {i}"));
            let input = random(shape, i as u64);
            assert_close(
                &run(fast, &input),
                &run(model, &input),
                &format!("case {i} {shape:?}"),
            );
        }
    }

    #[test]
    fn pointwise_convolution_and_its_bias_become_one_node() {
        // tract declutters a 1×1 convolution into an `EinSum` plus a bias `Add`, as it does in
        // the OCR graphs; both become one node.
        for (i, shape) in [[1usize, 16, 6, 50], [3, 24, 3, 40]].iter().enumerate() {
            let model = conv_graph(shape, 20, 1, (1, 1), 1, [0; 4], 1)
                .into_decluttered()
                .unwrap();
            assert!(
                ops(&model).iter().any(|o| o == "EinSum"),
                "{:?}",
                ops(&model)
            );
            let fast = accelerate(model.clone(), &HashSet::new()).unwrap();
            assert_dense_kernel(&fast, "SandraPointwiseConv", &format!("case {i}"));
            assert!(
                !ops(&fast).iter().any(|o| o == "EinSum" || o == "Add"),
                "{:?}",
                ops(&fast)
            );
            let input = random(shape, i as u64);
            assert_close(
                &run(fast, &input),
                &run(model, &input),
                &format!("case {i}"),
            );
        }
    }

    /// The detector's 1×1 convolutions on a page turned a quarter (CHW 96×34×16, taller than
    /// wide), in both forms tract declutters them to there: with the batch axis gone, and gone
    /// from the input only. tract 0.22.5's own AVX2 matmul got these wrong, so the sums are
    /// checked against the definition here, not against tract.
    #[test]
    fn pointwise_convolution_of_a_portrait_plane_matches_the_definition() {
        let (cin, cout, h, w) = (96, 192, 34, 16);
        let (k, b) = (random(&[cout, cin], 7), random(&[cout, 1, 1], 9));
        let input = random(&[cin, h, w], 5);
        for (expr, out_shape) in [
            ("IHW,OI->OHW", &[cout, h, w][..]),
            ("IHW,OI->NOHW", &[1, cout, h, w][..]),
        ] {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([cin, h, w])).unwrap();
            let kc = model.add_const("k", k.clone()).unwrap();
            // The bias per output channel, with the output's rank.
            let mut bias = b.clone();
            if out_shape.len() == 4 {
                bias.insert_axis(0).unwrap();
            }
            let bc = model.add_const("b", bias).unwrap();
            let einsum = EinSum::new(expr.parse().unwrap(), f32::datum_type());
            let y = model.wire_node("einsum", einsum, &[x, kc]).unwrap();
            let y = model
                .wire_node(
                    "bias",
                    tract_onnx::tract_core::ops::math::add(),
                    &[y[0], bc],
                )
                .unwrap();
            model.set_output_outlets(&y).unwrap();
            let fast = accelerate(model, &HashSet::new()).unwrap();
            assert_eq!(ops(&fast), ["Source", "SandraPointwiseConv"], "{expr}");
            let got = run(fast, &input);
            assert_eq!(got.shape(), out_shape, "{expr}");
            // The weights and bias summed the obvious way in f64; a wrong read is off by the
            // size of a term, rounding by 1e-5.
            let (k, b, x, got) = (
                k.as_slice::<f32>().unwrap(),
                b.as_slice::<f32>().unwrap(),
                input.as_slice::<f32>().unwrap(),
                got.as_slice::<f32>().unwrap(),
            );
            for o in 0..cout {
                for p in 0..h * w {
                    let want = b[o] as f64
                        + (0..cin)
                            .map(|c| k[o * cin + c] as f64 * x[c * h * w + p] as f64)
                            .sum::<f64>();
                    let g = got[o * h * w + p] as f64;
                    assert!(
                        (g - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{expr}: output {o} pixel {p}: {g} vs {want}"
                    );
                }
            }
        }
    }

    type DwCase = (&'static [usize], (usize, usize), usize, [usize; 4]);

    #[test]
    fn depthwise_convolution_matches_tract() {
        // (input shape, kernel, stride, padding top/left/bottom/right)
        let cases: &[DwCase] = &[
            (&[1, 4, 9, 11], (3, 3), 1, [1, 1, 1, 1]),
            (&[2, 3, 10, 7], (3, 3), 2, [1, 1, 1, 1]),
            (&[1, 5, 12, 13], (5, 5), 1, [2, 2, 2, 2]),
            (&[1, 5, 12, 13], (5, 5), 2, [2, 2, 2, 2]),
            (&[1, 2, 8, 8], (3, 3), 2, [0, 0, 1, 1]),
            (&[1, 2, 6, 9], (1, 3), 1, [0, 1, 0, 1]),
            (&[1, 3, 2, 2], (5, 5), 1, [2, 2, 2, 2]),
            (&[6, 30, 17], (3, 3), 1, [1, 1, 1, 1]),
            // Enough output to take the parallel path.
            (&[1, 8, 64, 80], (3, 3), 1, [1, 1, 1, 1]),
        ];
        for (i, &(shape, k, stride, pad)) in cases.iter().enumerate() {
            let model = dw_graph(shape, k, stride, pad, 1);
            let fast = accelerate(model.clone(), &HashSet::new()).unwrap();
            assert!(
                ops(&fast).contains(&"SandraDepthwiseConv".to_string()),
                "case {i}"
            );
            let input = random(shape, i as u64);
            assert_close(
                &run(fast, &input),
                &run(model, &input),
                &format!("case {i} {shape:?}"),
            );
        }
    }

    #[test]
    fn dilated_convolutions_keep_tracts_op() {
        let model = dw_graph(&[1, 4, 9, 9], (3, 3), 1, [2, 2, 2, 2], 2);
        let fast = accelerate(model, &HashSet::new()).unwrap();
        assert!(!ops(&fast).contains(&"SandraDepthwiseConv".to_string()));
    }

    #[test]
    fn last_axis_softmax_matches_tract() {
        for (i, shape) in [&[2usize, 3, 7, 50][..], &[4, 80, 80], &[1, 1]]
            .iter()
            .enumerate()
        {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact(*shape)).unwrap();
            let op = Softmax::new(tvec![shape.len() - 1], None, SoftmaxKind::default());
            let out = m.wire_node("softmax", op, &[x]).unwrap();
            m.set_output_outlets(&out).unwrap();
            let fast = accelerate(m.clone(), &HashSet::new()).unwrap();
            assert!(ops(&fast).contains(&"SandraSoftmax".to_string()));
            let input = random(shape, 40 + i as u64);
            let got = run(fast, &input);
            assert_close(&got, &run(m, &input), &format!("softmax {shape:?}"));
            let rows = got
                .as_slice::<f32>()
                .unwrap()
                .chunks(*shape.last().unwrap());
            rows.for_each(|r| assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
        }
    }

    /// An ONNX graph of one `Resize` (opset 11) with `scales` and the given attributes.
    fn resize_proto(scales: [f32; 4], attrs: &[(&str, &str)]) -> ModelProto {
        let tensor = |name: &str, v: &[f32]| TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        };
        let value = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = NodeProto {
            name: "up".into(),
            op_type: "Resize".into(),
            input: vec!["x".into(), "roi".into(), "scales".into()],
            output: vec!["y".into()],
            attribute: attrs
                .iter()
                .map(|(k, v)| AttributeProto {
                    name: (*k).into(),
                    r#type: AttributeType::String as i32,
                    s: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        ModelProto {
            ir_version: 7,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 11,
            }],
            graph: Some(GraphProto {
                node: vec![node],
                initializer: vec![tensor("roi", &[]), tensor("scales", &scales)],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn typed(proto: &ModelProto, shape: &[usize]) -> TypedModel {
        tract_onnx::onnx()
            .model_for_proto_model(proto)
            .unwrap()
            .with_input_fact(0, f32::fact(shape).into())
            .unwrap()
            .into_typed()
            .unwrap()
            .into_decluttered()
            .unwrap()
    }

    const NEAREST_FLOOR: &[(&str, &str)] = &[
        ("mode", "nearest"),
        ("coordinate_transformation_mode", "asymmetric"),
        ("nearest_mode", "floor"),
    ];

    #[test]
    fn nearest_upsampling_matches_tracts_resize() {
        for (i, (scales, shape)) in [
            ([1.0, 1.0, 2.0, 2.0], [1usize, 3, 5, 7]),
            ([1.0, 1.0, 8.0, 4.0], [2, 2, 3, 4]),
            ([1.0, 1.0, 2.0, 2.0], [1, 16, 40, 40]),
        ]
        .into_iter()
        .enumerate()
        {
            let proto = resize_proto(scales, NEAREST_FLOOR);
            let names = nearest_floor_resizes(&proto);
            assert_eq!(names, HashSet::from(["up".to_string()]));
            let model = typed(&proto, &shape);
            let fast = accelerate(model.clone(), &names).unwrap();
            assert!(
                ops(&fast).contains(&"SandraUpsample".to_string()),
                "case {i}"
            );
            let input = random(&shape, 60 + i as u64);
            assert_close(
                &run(fast, &input),
                &run(model, &input),
                &format!("resize {scales:?}"),
            );
        }
    }

    #[test]
    fn other_resizes_keep_tracts_op() {
        // Bilinear, and ONNX's default (half-pixel) coordinates: not a plain index division.
        let bilinear = resize_proto([1.0, 1.0, 2.0, 2.0], &[("mode", "linear")]);
        assert!(nearest_floor_resizes(&bilinear).is_empty());
        let half_pixel = resize_proto([1.0, 1.0, 2.0, 2.0], &[("mode", "nearest")]);
        assert!(nearest_floor_resizes(&half_pixel).is_empty());
        // A fractional scale has no integer factor.
        let proto = resize_proto([1.0, 1.0, 1.5, 2.0], NEAREST_FLOOR);
        let names = nearest_floor_resizes(&proto);
        let fast = accelerate(typed(&proto, &[1, 2, 4, 4]), &names).unwrap();
        assert!(!ops(&fast).contains(&"SandraUpsample".to_string()));
    }
}
