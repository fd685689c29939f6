//! The autograd tape.
//!
//! Differentiable ops (`nn::*`) run their forward kernel at once and record a
//! node: which tensors went in, which came out, and a closure that turns the
//! output's gradient into the inputs' gradients. `backward` walks the nodes in
//! reverse, calls each closure, and sums gradients that reach the same tensor
//! twice (a residual shortcut feeds two paths): with an add of its own, or
//! inside the op when it was recorded with `record_folding` (a product can
//! add the sum so far to its output as it writes it). Only tensors that lead to a
//! watched parameter take part, so inputs such as the image cost nothing.
//! Transposes that backward closures will need (a convolution's weights) can
//! be asked for in the forward pass (`transpose_later`): they are then made
//! together, in one dispatch, when the first is read.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Result, ensure};

use crate::engine::ops::elementwise;
use crate::engine::ops::transpose::{transpose, transpose_many};
use crate::engine::{Gpu, Tensor};

/// Gradients of the inputs that need one, in input order. The last argument
/// is, for a node recorded with `record_folding`, the gradient its first
/// input has received so far (None for the others): the node returns that
/// input's gradient with it added.
pub type Backward =
    Box<dyn FnOnce(&Gpu, &Tensor, &[bool], Option<Tensor>) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    inputs: Vec<u64>,
    output: u64,
    backward: Backward,
    /// Whether `backward` adds its first input's earlier gradient itself.
    folds_prior: bool,
    /// The profile label of the op (its backward runs under the same one).
    label: Arc<str>,
}

pub struct Tape {
    gpu: Gpu,
    nodes: RefCell<Vec<Node>>,
    /// Tensors whose gradient is wanted or leads to one that is.
    tracked: RefCell<HashSet<u64>>,
    transposes: Rc<LaterTransposes>,
}

/// The matrices `transpose_later` was asked for, and once the first was
/// read, all of them transposed.
#[derive(Default)]
struct LaterTransposes {
    wanted: RefCell<Vec<(Tensor, usize, usize)>>,
    made: RefCell<Vec<Tensor>>,
}

/// A transpose asked for in the forward pass; `get` (in a backward closure)
/// returns it, making every one still wanted in one go.
pub struct Transposed {
    batch: Rc<LaterTransposes>,
    index: usize,
}

impl Transposed {
    pub fn get(&self, gpu: &Gpu) -> Result<Tensor> {
        let mut made = self.batch.made.borrow_mut();
        if made.is_empty() {
            let wanted = self.batch.wanted.borrow();
            let matrices: Vec<_> = wanted.iter().map(|(t, r, c)| (t, *r, *c)).collect();
            *made = transpose_many(gpu, &matrices)?;
        }
        match made.get(self.index) {
            Some(t) => Ok(t.clone()),
            // Asked for after the others were made: on its own.
            None => {
                let (t, rows, cols) = &self.batch.wanted.borrow()[self.index];
                transpose(gpu, t, *rows, *cols)
            }
        }
    }
}

/// Gradients by tensor id, of the watched tensors.
pub struct Grads(HashMap<u64, Tensor>);

impl Grads {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
}

impl Tape {
    pub fn new(gpu: &Gpu) -> Self {
        Tape {
            gpu: gpu.clone(),
            nodes: RefCell::default(),
            tracked: RefCell::default(),
            transposes: Rc::default(),
        }
    }

    /// `t` ([rows, cols]) transposed, made when a backward closure first
    /// reads it, together with every other one asked for (one dispatch
    /// instead of one each). `t` must not change before then.
    pub fn transpose_later(&self, t: &Tensor, rows: usize, cols: usize) -> Transposed {
        let mut wanted = self.transposes.wanted.borrow_mut();
        wanted.push((t.clone(), rows, cols));
        Transposed {
            batch: self.transposes.clone(),
            index: wanted.len() - 1,
        }
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Ask for the gradient of a leaf tensor (a parameter).
    pub fn watch(&self, t: &Tensor) {
        self.tracked.borrow_mut().insert(t.id());
    }

    pub fn is_tracked(&self, t: &Tensor) -> bool {
        self.tracked.borrow().contains(&t.id())
    }

    /// Record `output = op(inputs)`. Nothing is kept when no input is tracked
    /// (inference, or a branch that leads to no parameter).
    pub fn record(
        &self,
        inputs: &[&Tensor],
        output: &Tensor,
        backward: impl FnOnce(&Gpu, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) {
        let backward: Backward = Box::new(move |gpu, dy, needs, _| backward(gpu, dy, needs));
        self.push(inputs, output, backward, false);
    }

    /// `record` for an op whose backward adds the gradient its first input
    /// has already received to the one it computes (`Backward`'s last
    /// argument), saving the tape's add.
    pub fn record_folding(
        &self,
        inputs: &[&Tensor],
        output: &Tensor,
        backward: impl FnOnce(&Gpu, &Tensor, &[bool], Option<Tensor>) -> Result<Vec<Option<Tensor>>>
        + 'static,
    ) {
        self.push(inputs, output, Box::new(backward), true);
    }

    fn push(&self, inputs: &[&Tensor], output: &Tensor, backward: Backward, folds_prior: bool) {
        if !inputs.iter().any(|t| self.is_tracked(t)) {
            return;
        }
        self.tracked.borrow_mut().insert(output.id());
        self.nodes.borrow_mut().push(Node {
            inputs: inputs.iter().map(|t| t.id()).collect(),
            output: output.id(),
            backward,
            folds_prior,
            label: self.gpu.scope().0,
        });
    }

    /// Back-propagate from `output`, whose gradient is `seed`. Returns the
    /// gradients of the watched leaves.
    pub fn backward(self, output: &Tensor, seed: Tensor) -> Result<Grads> {
        let tracked = self.tracked.into_inner();
        let mut nodes = self.nodes.into_inner();
        let mut grads: HashMap<u64, Tensor> = HashMap::from([(output.id(), seed)]);
        let produced: HashSet<u64> = nodes.iter().map(|n| n.output).collect();
        while let Some(node) = nodes.pop() {
            // An intermediate's gradient is complete once its producer is reached.
            let Some(dy) = grads.remove(&node.output) else {
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(|id| tracked.contains(id)).collect();
            self.gpu.set_scope(&node.label, "backward");
            let prior = match node.folds_prior && needs[0] {
                true => grads.remove(&node.inputs[0]),
                false => None,
            };
            let folded = prior.is_some();
            let dxs = (node.backward)(&self.gpu, &dy, &needs, prior)?;
            ensure!(
                !folded || dxs.first().is_some_and(Option::is_some),
                "an op recorded with record_folding dropped its input's gradient"
            );
            for ((id, dx), need) in node.inputs.iter().zip(dxs).zip(needs) {
                let Some(dx) = dx.filter(|_| need) else {
                    continue;
                };
                let sum = match grads.remove(id) {
                    Some(g) => elementwise::add(&self.gpu, &g, &dx.reshape(g.shape()))?,
                    None => dx,
                };
                grads.insert(*id, sum);
            }
        }
        grads.retain(|id, _| !produced.contains(id));
        Ok(Grads(grads))
    }
}
