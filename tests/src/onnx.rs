//! Small ONNX models written as protobuf by hand (field numbers from
//! onnx.proto), for tests and the chaos harness: no Python, no files.

use tessera_common::put_varint as varint;

/// A length-delimited field (bytes, string or sub-message).
fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A varint field.
fn int(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

const FLOAT: u64 = 1;
const INT64: u64 = 7;
const DOUBLE: u64 = 11;

/// A graph input or output: `name`, a tensor of `elem_type` with `dims`
/// (0: a dimension of any size).
fn value_info(name: &str, elem_type: u64, dims: &[u64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            0 => bytes(&mut dim, 2, b"N"), // dim_param
            d => int(&mut dim, 1, *d),     // dim_value
        }
        bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    int(&mut tensor, 1, elem_type);
    bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes(&mut ty, 1, &tensor); // tensor_type
    let mut vi = Vec::new();
    bytes(&mut vi, 1, name.as_bytes());
    bytes(&mut vi, 2, &ty);
    vi
}

/// A node applying `op` to `inputs`, giving `output`.
fn node(inputs: &[&str], output: &str, op: &str) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        bytes(&mut n, 1, i.as_bytes());
    }
    bytes(&mut n, 2, output.as_bytes());
    bytes(&mut n, 4, op.as_bytes()); // op_type
    n
}

/// A model (IR 7, default opset 13) around `graph`.
fn model(graph: &[u8]) -> Vec<u8> {
    model_ir(graph, 7)
}

fn model_ir(graph: &[u8], ir: u64) -> Vec<u8> {
    let mut opset = Vec::new();
    bytes(&mut opset, 1, b"");
    int(&mut opset, 2, 13);
    let mut m = Vec::new();
    int(&mut m, 1, ir); // ir_version
    bytes(&mut m, 2, b"tessera-tests"); // producer_name
    bytes(&mut m, 7, graph);
    bytes(&mut m, 8, &opset);
    m
}

/// An initializer's `TensorProto` up to its raw data's length (`doc`, when
/// not empty, goes before it): the caller appends `raw_len` bytes.
fn initializer(dims: &[u64], data_type: u64, name: &str, doc: &[u8], raw_len: usize) -> Vec<u8> {
    let mut init = Vec::with_capacity(raw_len + doc.len() + 64);
    for d in dims {
        int(&mut init, 1, *d); // dims
    }
    int(&mut init, 2, data_type);
    bytes(&mut init, 8, name.as_bytes());
    if !doc.is_empty() {
        bytes(&mut init, 12, doc); // doc_string
    }
    varint(&mut init, 9 << 3 | 2); // raw_data
    varint(&mut init, raw_len as u64);
    init
}

/// `Y = X + c` on DOUBLE tensors of shape [1].
pub fn add_const(c: f64) -> Vec<u8> {
    let mut init = initializer(&[1], DOUBLE, "C", b"", 8);
    init.extend_from_slice(&c.to_le_bytes());
    scalar_model(&[node(&["X", "C"], "Y", "Add")], b"add", &init, DOUBLE)
}

/// A model of `nodes` (graph `name`) with one initializer, from input X to
/// output Y, both `elem_type` tensors of shape [1].
fn scalar_model(nodes: &[Vec<u8>], name: &[u8], init: &[u8], elem_type: u64) -> Vec<u8> {
    let mut graph = Vec::new();
    for n in nodes {
        bytes(&mut graph, 1, n);
    }
    bytes(&mut graph, 2, name);
    bytes(&mut graph, 5, init);
    bytes(&mut graph, 11, &value_info("X", elem_type, &[1]));
    bytes(&mut graph, 12, &value_info("Y", elem_type, &[1]));
    model(&graph)
}

/// `depth` chained products `Y = X·X·…·X` of FLOAT [n, n] matrices (slow
/// on purpose).
pub fn matmul_chain(n: u64, depth: usize) -> Vec<u8> {
    let mut graph = Vec::new();
    for i in 0..depth {
        let input = if i == 0 { "X".to_owned() } else { format!("T{i}") };
        let output = if i + 1 == depth { "Y".to_owned() } else { format!("T{}", i + 1) };
        bytes(&mut graph, 1, &node(&[&input, "X"], &output, "MatMul"));
    }
    bytes(&mut graph, 2, b"chain");
    bytes(&mut graph, 11, &value_info("X", FLOAT, &[n, n]));
    bytes(&mut graph, 12, &value_info("Y", FLOAT, &[n, n]));
    model(&graph)
}

/// An embedding table: `Y = Gather(W, X)` with W a FLOAT [rows, dim]
/// initializer whose row r holds r in every column, X INT64 [N] row
/// numbers, Y FLOAT [N, dim]. About `4 * rows * dim` bytes. `shift` bytes of
/// doc string before W's data move where its bytes lie in the model (their
/// alignment).
pub fn embedding(rows: usize, dim: usize, shift: usize) -> Vec<u8> {
    embedding_ir(rows, dim, shift, false)
}

/// [`embedding`] as an IR 3 model whose initializer W is also listed as a
/// graph input, as older exporters wrote models (RedisAI's mnist.onnx).
pub fn embedding_as_input(rows: usize, dim: usize) -> Vec<u8> {
    embedding_ir(rows, dim, 0, true)
}

fn embedding_ir(rows: usize, dim: usize, shift: usize, as_input: bool) -> Vec<u8> {
    let mut init = initializer(&[rows as u64, dim as u64], FLOAT, "W", &vec![b' '; shift], rows * dim * 4);
    for r in 0..rows {
        let row = (r as f32).to_le_bytes();
        for _ in 0..dim {
            init.extend_from_slice(&row);
        }
    }
    let mut graph = Vec::with_capacity(init.len() + 256);
    bytes(&mut graph, 1, &node(&["W", "X"], "Y", "Gather"));
    bytes(&mut graph, 2, b"embedding");
    bytes(&mut graph, 5, &init);
    drop(init);
    bytes(&mut graph, 11, &value_info("X", INT64, &[0]));
    if as_input {
        bytes(&mut graph, 11, &value_info("W", FLOAT, &[rows as u64, dim as u64]));
    }
    bytes(&mut graph, 12, &value_info("Y", FLOAT, &[0, dim as u64]));
    model_ir(&graph, if as_input { 3 } else { 7 })
}

/// `tables` embedding tables looked up at once, as a model with many
/// weights holds them: `Y = Gather(W0, X) + … + Gather(Wt, X)`, each W a
/// FLOAT [rows, dim] initializer whose row r holds `(t + 1) * r`, so row r
/// of Y holds `r * t(t+1)/2` with t tables. The tables' names grow a byte
/// each, so their bytes lie at every alignment. About `4 * tables * rows *
/// dim` bytes.
pub fn embeddings(tables: usize, rows: usize, dim: usize) -> Vec<u8> {
    let mut graph = Vec::with_capacity(tables * (rows * dim * 4 + 64) + 1024);
    let name = |t: usize| format!("W{}", "w".repeat(t));
    for t in 0..tables {
        bytes(&mut graph, 1, &node(&[&name(t), "X"], &format!("G{t}"), "Gather"));
        let sum = |t: usize| if t == 0 { "G0".to_owned() } else { format!("S{t}") };
        if t > 0 {
            let out = if t + 1 == tables { "Y".to_owned() } else { sum(t) };
            bytes(&mut graph, 1, &node(&[&sum(t - 1), &format!("G{t}")], &out, "Add"));
        }
    }
    if tables == 1 {
        bytes(&mut graph, 1, &node(&["G0"], "Y", "Identity"));
    }
    bytes(&mut graph, 2, b"embeddings");
    for t in 0..tables {
        let mut init = initializer(&[rows as u64, dim as u64], FLOAT, &name(t), b"", rows * dim * 4);
        for r in 0..rows {
            let row = (((t + 1) * r) as f32).to_le_bytes();
            for _ in 0..dim {
                init.extend_from_slice(&row);
            }
        }
        bytes(&mut graph, 5, &init);
    }
    bytes(&mut graph, 11, &value_info("X", INT64, &[0]));
    bytes(&mut graph, 12, &value_info("Y", FLOAT, &[0, dim as u64]));
    model(&graph)
}

/// `Y = X + W` on FLOAT [1], W's data in an external file at `location`
/// (which a model loaded from bytes must not get to read).
pub fn external_weight(location: &str) -> Vec<u8> {
    let mut entry = Vec::new();
    bytes(&mut entry, 1, b"location");
    bytes(&mut entry, 2, location.as_bytes());
    let mut init = Vec::new();
    int(&mut init, 1, 1); // dims
    int(&mut init, 2, FLOAT); // data_type
    bytes(&mut init, 8, b"W"); // name
    bytes(&mut init, 13, &entry); // external_data
    int(&mut init, 14, 1); // data_location: EXTERNAL
    scalar_model(&[node(&["X", "W"], "Y", "Add")], b"external", &init, FLOAT)
}

/// `Y = X + ReduceSum(W)` on FLOAT [1], with W `n` floats of 1 (so Y = X +
/// n): ONNX Runtime folds the sum while it loads the model, reading W.
pub fn folded_sum(n: usize) -> Vec<u8> {
    let mut init = initializer(&[n as u64], FLOAT, "W", b"", n * 4);
    for _ in 0..n {
        init.extend_from_slice(&1f32.to_le_bytes());
    }
    scalar_model(&[node(&["W"], "S", "ReduceSum"), node(&["X", "S"], "Y", "Add")], b"folded", &init, FLOAT)
}

/// The shape of aibench's fraud-detection model (creditcardfraud.pb): a
/// transaction X FLOAT [1, 30] and a reference window Y FLOAT [1, 256] to
/// scores Z FLOAT [1, 2], here `Z = X·W1 + Y·W2` with every weight of W1
/// 0.01 and of W2 0.001 (each score is `0.01 ΣX + 0.001 ΣY`).
pub fn fraud_shape() -> Vec<u8> {
    let weights = |name: &str, rows: u64, w: f32| {
        let mut init = initializer(&[rows, 2], FLOAT, name, b"", 4 * 2 * rows as usize);
        for _ in 0..2 * rows {
            init.extend_from_slice(&w.to_le_bytes());
        }
        init
    };
    let mut graph = Vec::new();
    bytes(&mut graph, 1, &node(&["X", "W1"], "A", "MatMul"));
    bytes(&mut graph, 1, &node(&["Y", "W2"], "B", "MatMul"));
    bytes(&mut graph, 1, &node(&["A", "B"], "Z", "Add"));
    bytes(&mut graph, 2, b"fraud");
    bytes(&mut graph, 5, &weights("W1", 30, 0.01));
    bytes(&mut graph, 5, &weights("W2", 256, 0.001));
    bytes(&mut graph, 11, &value_info("X", FLOAT, &[1, 30]));
    bytes(&mut graph, 11, &value_info("Y", FLOAT, &[1, 256]));
    bytes(&mut graph, 12, &value_info("Z", FLOAT, &[1, 2]));
    model(&graph)
}
