//! TF (frozen GraphDef) and TFLite models on tract, a pure-Rust runtime: no
//! TensorFlow install, nothing to fetch.
//!
//! TF graphs usually leave input shapes open, and tract plans for concrete
//! shapes; so a TF model keeps its parsed graph and builds (and caches) a
//! plan per input signature on first use. TFLite models carry their shapes
//! and are planned once, at load. Operators tract does not implement are
//! reported at MODELSTORE, never at run time.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tessera_backend::{Backend, BackendError, BackendKind, DType, Device, LoadOptions, Model, Result, Tensor};
use tract_tensorflow::prelude::*;
use tract_tensorflow::tract_hir::internal::DimLike;

mod tf_ops;

pub use tf_ops::ADDED as TF_OPS_ADDED;

pub const TRACT_VERSION: &str = "0.23.9";

/// Plans kept per TF model (one per distinct input signature).
const MAX_PLANS: usize = 16;

type Plan = Arc<TypedRunnableModel>;

/// Input dtypes and shapes: what a TF plan is built for.
type Signature = Vec<(DType, Vec<i64>)>;

fn err(e: impl std::fmt::Display) -> BackendError {
    BackendError::new(e.to_string())
}

fn check_device(device: Device, name: &str) -> Result<()> {
    match device {
        Device::Cpu(_) => Ok(()),
        Device::Gpu(_) => Err(BackendError::new(format!("ERR GPU requested but {name} couldn't find CUDA"))),
        Device::Tpu => Err(BackendError::new("ERR unsupported device")),
    }
}

fn datum(d: DType) -> Result<DatumType> {
    Ok(match d {
        DType::Float => DatumType::F32,
        DType::Double => DatumType::F64,
        DType::Int8 => DatumType::I8,
        DType::Int16 => DatumType::I16,
        DType::Int32 => DatumType::I32,
        DType::Int64 => DatumType::I64,
        DType::Uint8 => DatumType::U8,
        DType::Uint16 => DatumType::U16,
        DType::Bool => DatumType::Bool,
        DType::String => return Err(BackendError::new("ERR Unsupported input data type: STRING")),
    })
}

fn dtype(d: DatumType) -> Result<DType> {
    Ok(match d {
        DatumType::F32 => DType::Float,
        DatumType::F64 => DType::Double,
        DatumType::I8 => DType::Int8,
        DatumType::I16 => DType::Int16,
        DatumType::I32 => DType::Int32,
        DatumType::I64 => DType::Int64,
        DatumType::U8 => DType::Uint8,
        DatumType::U16 => DType::Uint16,
        DatumType::Bool => DType::Bool,
        other => return Err(BackendError::new(format!("ERR Unsupported output data type: {other:?}"))),
    })
}

fn shape_of(t: &Tensor) -> Vec<usize> {
    t.shape.iter().map(|d| usize::try_from(*d).unwrap_or(0)).collect()
}

fn to_tract(t: &Tensor) -> Result<TValue> {
    let dt = datum(t.dtype)?;
    // Safety: `t.data` holds exactly product(shape) elements of `dt` in
    // little-endian row-major order (validated when the tensor was set);
    // tract copies it into an aligned buffer.
    let tensor = unsafe { tract_tensorflow::prelude::Tensor::from_raw_dt(dt, &shape_of(t), &t.data) }.map_err(err)?;
    Ok(tensor.into_tvalue())
}

fn from_tract(v: &TValue) -> Result<Tensor> {
    let dt = dtype(v.datum_type())?;
    let shape = v.shape().iter().map(|d| *d as i64).collect();
    Ok(Tensor { dtype: dt, shape, data: v.as_bytes().to_vec().into() })
}

fn unimplemented_ops<F, O>(model: &Graph<F, O>) -> Vec<String>
where
    F: Fact + Clone + 'static,
    O: std::fmt::Debug + std::fmt::Display + AsRef<dyn Op> + AsMut<dyn Op> + Clone + 'static,
{
    model
        .nodes()
        .iter()
        .filter(|n| n.op.as_ref().name().starts_with("Unimplemented("))
        .map(|n| format!("{} ({})", n.name, n.op.as_ref().name()))
        .collect()
}

/// TF frozen graphs.
pub struct TfBackend;

impl Backend for TfBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Tf
    }

    fn version(&self) -> String {
        format!("tract {TRACT_VERSION}")
    }

    fn load(&self, blob: &[u8], opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        check_device(opts.device, "TF")?;
        let mut tf = tract_tensorflow::tensorflow();
        tf_ops::register(&mut tf);
        let graph = tf.proto_model_for_read(&mut &blob[..]).map_err(|_| BackendError::new("Invalid GraphDef"))?;
        for name in &opts.inputs {
            if !graph.node.iter().any(|n| &n.name == name && n.op == "Placeholder") {
                return Err(BackendError::new(format!("ERR Input node named \"{name}\" not found in TF graph.")));
            }
        }
        for name in &opts.outputs {
            if !graph.node.iter().any(|n| &n.name == name) {
                return Err(BackendError::new(format!("ERR Output node named \"{name}\" not found in TF graph")));
            }
        }
        let mut model = tf.model_for_proto_model(&graph).map_err(err)?;
        let missing = unimplemented_ops(&model);
        if !missing.is_empty() {
            return Err(BackendError::new(format!(
                "ERR TF operators not supported by this build: {}",
                missing.join(", ")
            )));
        }
        model.set_input_names(&opts.inputs).map_err(err)?;
        model.select_outputs_by_name(&opts.outputs).map_err(err)?;
        Ok(Arc::new(TfModel {
            graph: model,
            inputs: opts.inputs.clone(),
            outputs: opts.outputs.clone(),
            plans: Mutex::new(HashMap::new()),
        }))
    }
}

struct TfModel {
    graph: InferenceModel,
    inputs: Vec<String>,
    outputs: Vec<String>,
    plans: Mutex<HashMap<Signature, Plan>>,
}

impl TfModel {
    fn plan(&self, inputs: &[Tensor]) -> Result<Plan> {
        let key: Signature = inputs.iter().map(|t| (t.dtype, t.shape.clone())).collect();
        if let Some(p) = self.plans.lock().get(&key) {
            return Ok(p.clone());
        }
        let mut model = self.graph.clone();
        for (i, t) in inputs.iter().enumerate() {
            let fact = InferenceFact::dt_shape(datum(t.dtype)?, shape_of(t));
            model.set_input_fact(i, fact).map_err(err)?;
        }
        let plan = model.into_optimized().map_err(err)?.into_runnable().map_err(err)?;
        let mut plans = self.plans.lock();
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}

impl Model for TfModel {
    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn outputs(&self) -> &[String] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let plan = self.plan(inputs)?;
        let values = inputs.iter().map(to_tract).collect::<Result<TVec<_>>>()?;
        let out = plan.run(values).map_err(err)?;
        out.iter().map(|v| from_tract(v).map(Some)).collect()
    }
}

/// TFLite flatbuffers.
pub struct TfLiteBackend;

impl Backend for TfLiteBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::TfLite
    }

    fn version(&self) -> String {
        format!("tract {TRACT_VERSION}")
    }

    fn load(&self, blob: &[u8], opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        check_device(opts.device, "TFLITE")?;
        let tfl = tract_tflite::tflite();
        let model = tfl.model_for_read(&mut &blob[..]).map_err(|e| {
            let detail = format!("{e:#}");
            match unsupported_op(&detail) {
                Some(op) => {
                    BackendError::new(format!("ERR TFLite operator {op} is not supported by this build (tract)"))
                }
                None if detail.contains("Unsupported") => BackendError::new(format!(
                    "ERR TFLite model not supported by this build (tract): {}",
                    detail.split_whitespace().collect::<Vec<_>>().join(" ")
                )),
                None => BackendError::new("Failed to load model from buffer"),
            }
        })?;
        let missing = unimplemented_ops(&model);
        if !missing.is_empty() {
            return Err(BackendError::new(format!(
                "ERR TFLite operators not supported by this build: {}",
                missing.join(", ")
            )));
        }
        let name = |o: &OutletId| model.node(o.node).name.clone();
        let inputs = model.input_outlets().map_err(err)?.iter().map(name).collect();
        let outputs = model.output_outlets().map_err(err)?.iter().map(name).collect();
        let concrete = model
            .input_outlets()
            .map_err(err)?
            .iter()
            .all(|o| model.outlet_fact(*o).is_ok_and(|f| f.shape.iter().all(|d| d.to_usize().is_ok())));
        let plan = if concrete {
            Some(model.clone().into_optimized().map_err(err)?.into_runnable().map_err(err)?)
        } else {
            None
        };
        Ok(Arc::new(TfLiteModel { model, plan, inputs, outputs }))
    }
}

struct TfLiteModel {
    model: TypedModel,
    plan: Option<Plan>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Model for TfLiteModel {
    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn outputs(&self) -> &[String] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if inputs.len() != self.inputs.len() {
            return Err(BackendError::new("Inconsistent number of inputs"));
        }
        let plan = match &self.plan {
            Some(p) => {
                for (i, t) in inputs.iter().enumerate() {
                    let fact = self.model.input_fact(i).map_err(err)?;
                    if fact.datum_type != datum(t.dtype)? {
                        return Err(BackendError::new(
                            "Input tensor type doesn't match the type expected by the model definition",
                        ));
                    }
                    let want: Vec<usize> = fact.shape.iter().filter_map(|d| d.to_usize().ok()).collect();
                    if want != shape_of(t) {
                        return Err(BackendError::new("Failed to resize input tensors"));
                    }
                }
                p.clone()
            }
            None => self.model.clone().into_optimized().map_err(err)?.into_runnable().map_err(err)?,
        };
        let values = inputs.iter().map(to_tract).collect::<Result<TVec<_>>>()?;
        let out = plan.run(values).map_err(err)?;
        out.iter().map(|v| from_tract(v).map(Some)).collect()
    }
}

/// The operator named in tract's "Unsupported: OperatorCode { ... }" error.
fn unsupported_op(detail: &str) -> Option<String> {
    let at = detail.find("Unsupported: OperatorCode")?;
    let rest = &detail[at..];
    let code: u32 = rest
        .split("deprecated_builtin_code:")
        .nth(1)?
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    // TFLite's builtin operator numbers (schema.fbs) for the ops tract lacks
    // most often; 127 means "see builtin_code".
    let name = match code {
        6 => "DEQUANTIZE",
        36 => "GATHER",
        49 => "SPLIT",
        111 => "ELU",
        114 => "QUANTIZE",
        127 => {
            return rest
                .split("builtin_code:")
                .nth(2)
                .map(|s| s.trim().split([',', ' ']).next().unwrap_or("").to_owned())
        }
        _ => return Some(format!("#{code}")),
    };
    Some(name.to_owned())
}
