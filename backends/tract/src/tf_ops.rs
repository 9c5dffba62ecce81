//! TensorFlow operators tract's TF front end does not register, mapped onto
//! operators tract already has. Each one is element-wise (or an identity),
//! so its TF semantics are tract's op's: the tests run each one against
//! values TensorFlow 2.21 computed.
//!
//! Composite operators (`SquaredDifference`, `FloorDiv`, `BatchMatMul`,
//! `Einsum`, …) and stateful ones are not here: a graph using them still
//! fails at MODELSTORE, naming them.

use tract_tensorflow::tract_hir::internal::*;
use tract_tensorflow::tract_hir::ops;
use tract_tensorflow::tract_hir::ops::activations::{Elu, LeakyRelu, Selu, Softplus};
use tract_tensorflow::tract_hir::ops::binary::BinIntoHir;
use tract_tensorflow::tract_hir::ops::logic::CompNE;
use tract_tensorflow::Tensorflow;

/// The operators added, by TF name (what the docs list).
pub const ADDED: &[&str] = &[
    "Floor",
    "Exp",
    "Sqrt",
    "Square",
    "Reciprocal",
    "Inv",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Erf",
    "Elu",
    "Selu",
    "Softplus",
    "LeakyRelu",
    "NotEqual",
    "LogicalNot",
    "SelectV2",
    "StopGradient",
    "PreventGradient",
    "Snapshot",
];

/// TF's `Selu` constants (`alpha`, `scale`).
const SELU: (f32, f32) = (1.673_263_2, 1.050_701);

/// Registers [`ADDED`] on `tf`.
pub fn register(tf: &mut Tensorflow) {
    let reg = &mut tf.op_register;
    reg.insert("Floor", |_, _| Ok(ops::math::floor().into_hir()));
    reg.insert("Exp", |_, _| Ok(ops::math::exp().into_hir()));
    reg.insert("Sqrt", |_, _| Ok(ops::math::sqrt().into_hir()));
    reg.insert("Square", |_, _| Ok(ops::math::square().into_hir()));
    reg.insert("Reciprocal", |_, _| Ok(ops::math::recip().into_hir()));
    reg.insert("Inv", |_, _| Ok(ops::math::recip().into_hir()));
    // (TF rounds halves to even.)
    reg.insert("Round", |_, _| Ok(ops::math::round_half_to_even().into_hir()));
    reg.insert("Sign", |_, _| Ok(ops::math::sign().into_hir()));
    reg.insert("Sin", |_, _| Ok(ops::math::sin().into_hir()));
    reg.insert("Cos", |_, _| Ok(ops::math::cos().into_hir()));
    reg.insert("Tan", |_, _| Ok(ops::math::tan().into_hir()));
    reg.insert("Asin", |_, _| Ok(ops::math::asin().into_hir()));
    reg.insert("Acos", |_, _| Ok(ops::math::acos().into_hir()));
    reg.insert("Atan", |_, _| Ok(ops::math::atan().into_hir()));
    reg.insert("Sinh", |_, _| Ok(ops::math::sinh().into_hir()));
    reg.insert("Cosh", |_, _| Ok(ops::math::cosh().into_hir()));
    reg.insert("Asinh", |_, _| Ok(ops::math::asinh().into_hir()));
    reg.insert("Acosh", |_, _| Ok(ops::math::acosh().into_hir()));
    reg.insert("Atanh", |_, _| Ok(ops::math::atanh().into_hir()));
    reg.insert("Erf", |_, _| Ok(ops::math::erf().into_hir()));
    reg.insert("Elu", |_, _| Ok(expand(Elu(1.0))));
    reg.insert("Selu", |_, _| Ok(expand(Selu(SELU.0, SELU.1))));
    reg.insert("Softplus", |_, _| Ok(expand(Softplus)));
    reg.insert("LeakyRelu", |_, node| {
        let alpha = node.get_attr_opt_float::<f32>("alpha")?.unwrap_or(0.2);
        Ok(expand(LeakyRelu(alpha)))
    });
    reg.insert("NotEqual", |_, _| Ok(CompNE.into_hir()));
    reg.insert("LogicalNot", |_, _| Ok(ops::logic::not().into_hir()));
    // (Broadcasting select; the older `Select` has other shape rules.)
    reg.insert("SelectV2", |_, _| Ok(expand(ops::logic::Iff)));
    for identity in ["StopGradient", "PreventGradient", "Snapshot"] {
        reg.insert(identity, |_, _| Ok(Box::new(ops::identity::Identity)));
    }
    register_random(tf);
}

/// tract's own RandomUniform replays one fixed stream when both seeds are 0,
/// and folds it into a constant: a graph with dropout frozen into it
/// (RedisAI's `creditcardfraud.pb`) would answer one fixed draw. For
/// TensorFlow, seeds 0 mean "unseeded": a fresh draw on every run, which
/// [`FreshUniform`] gives. A seeded RandomUniform keeps tract's op (it
/// reproduces TensorFlow's Philox stream for that seed).
static TRACT_RANDOM_UNIFORM: std::sync::OnceLock<Builder> = std::sync::OnceLock::new();

/// How tract's TF front end builds an operator from its node.
type Builder = fn(
    &tract_tensorflow::model::ParsingContext,
    &tract_tensorflow::tfpb::tensorflow::NodeDef,
) -> TractResult<Box<dyn InferenceOp>>;

fn random_uniform(
    ctx: &tract_tensorflow::model::ParsingContext,
    node: &tract_tensorflow::tfpb::tensorflow::NodeDef,
) -> TractResult<Box<dyn InferenceOp>> {
    let (seed, seed2): (u64, u64) = (node.get_attr_int("seed")?, node.get_attr_int("seed2")?);
    let dtype = node.get_attr_datum_type("dtype")?;
    match TRACT_RANDOM_UNIFORM.get() {
        Some(tract_op) if seed != 0 || seed2 != 0 || dtype != f32::datum_type() => tract_op(ctx, node),
        _ => Ok(Box::new(FreshUniform)),
    }
}

pub(crate) fn register_random(tf: &mut Tensorflow) {
    if let Some(op) = tf.op_register.0.get("RandomUniform") {
        let _ = TRACT_RANDOM_UNIFORM.set(*op);
    }
    tf.op_register.insert("RandomUniform", random_uniform);
}

/// Uniform f32 values in [0, 1), freshly drawn on every evaluation, of the
/// shape its input gives.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct FreshUniform;

/// The most values one RandomUniform draws (a graph asking for more is a
/// mistake, or an attempt to exhaust the node's memory).
const MAX_DRAWN: usize = 1 << 26;

fn draw(shape: &[usize]) -> TractResult<TValue> {
    let n = shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d)).filter(|n| *n <= MAX_DRAWN);
    let Some(n) = n else { bail!("RandomUniform of shape {shape:?} is too large") };
    let values: Vec<f32> = (0..n).map(|_| rand::random::<f32>()).collect();
    Ok(tract_tensorflow::prelude::Tensor::from_shape(shape, &values)?.into_tvalue())
}

fn dims(shape: &TValue) -> TractResult<TVec<usize>> {
    let shape = shape.cast_to::<i64>()?;
    shape.try_as_plain_ram()?.as_slice::<i64>()?.iter().map(|d| usize::try_from(*d).map_err(|e| e.into())).collect()
}

impl Op for FreshUniform {
    fn name(&self) -> StaticName {
        "FreshRandomUniform".into()
    }

    fn validation(&self) -> Validation {
        Validation::Random
    }

    not_a_typed_op!();
}

impl EvalOp for FreshUniform {
    // (Never folded into a constant.)
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(draw(&dims(&inputs[0])?)?))
    }
}

impl InferenceRulesOp for FreshUniform {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 1)?;
        s.equals(&inputs[0].shape[0], outputs[0].rank.bex().to_dim())?;
        s.given(&inputs[0].value, move |s, value| {
            let shape: TVec<TDim> = dims(&value.into_tvalue())?.iter().map(|d| d.to_dim()).collect();
            s.equals(&outputs[0].shape, shape.bex())
        })?;
        Ok(())
    }

    as_op!();

    fn to_typed(
        &self,
        _source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let input = mapping[&node.inputs[0]];
        let Some(shape) = target.outlet_fact(input)?.konst.clone() else {
            bail!("RandomUniform with a shape known only at run time")
        };
        let shape = dims(&shape.into_tvalue())?;
        target.wire_node(&*node.name, TypedFreshUniform { shape }, &[input])
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct TypedFreshUniform {
    shape: TVec<usize>,
}

impl Op for TypedFreshUniform {
    fn name(&self) -> StaticName {
        "FreshRandomUniform".into()
    }

    fn validation(&self) -> Validation {
        Validation::Random
    }

    op_as_typed_op!();
}

impl EvalOp for TypedFreshUniform {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, _inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(draw(&self.shape)?))
    }
}

impl TypedOp for TypedFreshUniform {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.shape)))
    }

    as_op!();
}
