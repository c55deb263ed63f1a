//! The extension end to end through burn's `Tensor` API: on flex with autodiff, the depthwise
//! convolution's output and both gradients equal burn's own grouped convolution's.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

/// `device` with burn's random generator seeded: the tests draw their tensors at random, and a
/// failure must reproduce (nextest runs each test in its own process, so the draws are the same
/// on every run).
fn seeded(device: Device) -> Device {
    device.seed(20261129);
    device
}

fn max_difference(a: Tensor<4>, b: Tensor<4>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn compare(options: ConvOptions<2>, input: [usize; 4], kernel: usize) {
    let device = seeded(Device::flex().autodiff());
    let channels = input[1];
    let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), &device).require_grad();
    let w = Tensor::<4>::random([channels, 1, kernel, kernel], Distribution::Normal(0.0, 0.5), &device).require_grad();
    let ours = deeptune_kernels::depthwise_conv2d(x.clone(), w.clone(), options.clone());
    let theirs = conv2d(x.clone(), w.clone(), None, options.clone());
    assert_eq!(ours.dims(), theirs.dims());
    assert!(max_difference(ours.clone(), theirs.clone()) < 1e-5, "forward differs");
    // A loss that weighs every output differently, so every gradient entry matters.
    let weights = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
    let ours_grads = (ours * weights.clone()).sum().backward();
    let theirs_grads = (theirs * weights).sum().backward();
    let (x_ours, x_theirs) = (x.grad(&ours_grads).unwrap(), x.grad(&theirs_grads).unwrap());
    let (w_ours, w_theirs) = (w.grad(&ours_grads).unwrap(), w.grad(&theirs_grads).unwrap());
    let dx = max_difference(
        Tensor::from_data(x_ours.to_data(), &Device::flex()),
        Tensor::from_data(x_theirs.to_data(), &Device::flex()),
    );
    let dw = max_difference(
        Tensor::from_data(w_ours.to_data(), &Device::flex()),
        Tensor::from_data(w_theirs.to_data(), &Device::flex()),
    );
    assert!(dx < 1e-4, "input gradient differs by {dx} ({options:?})");
    assert!(dw < 1e-3, "weight gradient differs by {dw} ({options:?})");
}

#[test]
fn gradients_equal_burns_grouped_convolution() {
    compare(ConvOptions::new([1, 1], [1, 1], [1, 1], 8), [2, 8, 9, 7], 3);
    compare(ConvOptions::new([2, 2], [1, 1], [1, 1], 6), [3, 6, 10, 11], 3);
    compare(ConvOptions::new([1, 1], [2, 2], [1, 1], 4), [2, 4, 8, 8], 5);
    // TensorFlow "same" with stride 2: the odd pixel of padding at the end.
    compare(ConvOptions::new_with_padding([2, 2], [(1, 2), (1, 2)], [1, 1], 5), [2, 5, 8, 8], 5);
}

/// Our dense convolution against burn's on flex with autodiff: output and both gradients.
fn compare_dense(options: ConvOptions<2>, input: [usize; 4], out_channels: usize, kernel: usize) {
    let device = seeded(Device::flex().autodiff());
    let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), &device).require_grad();
    let w = Tensor::<4>::random([out_channels, input[1], kernel, kernel], Distribution::Normal(0.0, 0.5), &device)
        .require_grad();
    let ours = deeptune_kernels::dense_conv2d(x.clone(), w.clone(), options.clone());
    let theirs = conv2d(x.clone(), w.clone(), None, options.clone());
    assert_eq!(ours.dims(), theirs.dims());
    assert!(max_difference(ours.clone(), theirs.clone()) < 1e-4, "forward differs ({options:?})");
    let weights = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
    let ours_grads = (ours * weights.clone()).sum().backward();
    let theirs_grads = (theirs * weights).sum().backward();
    let plain = |t: Tensor<4>| Tensor::<4>::from_data(t.to_data(), &Device::flex());
    let dx = max_difference(plain(x.grad(&ours_grads).unwrap()), plain(x.grad(&theirs_grads).unwrap()));
    let dw = max_difference(plain(w.grad(&ours_grads).unwrap()), plain(w.grad(&theirs_grads).unwrap()));
    assert!(dx < 1e-3, "input gradient differs by {dx} ({options:?})");
    assert!(dw < 1e-2, "weight gradient differs by {dw} ({options:?})");
}

#[test]
fn dense_convolution_and_its_gradients_equal_burns() {
    compare_dense(ConvOptions::new([1, 1], [1, 1], [1, 1], 1), [4, 8, 9, 7], 6, 3);
    compare_dense(ConvOptions::new([2, 2], [3, 3], [1, 1], 1), [3, 3, 20, 18], 8, 7);
    compare_dense(ConvOptions::new([1, 1], [0, 0], [1, 1], 1), [5, 16, 6, 6], 12, 1);
    compare_dense(ConvOptions::new([2, 2], [0, 0], [1, 1], 1), [2, 16, 7, 7], 12, 1);
    compare_dense(ConvOptions::new([1, 1], [2, 2], [2, 2], 1), [2, 4, 10, 10], 5, 3);
    // Late-layer shapes: a 2×2 plane, so several images share one product.
    compare_dense(ConvOptions::new([1, 1], [1, 1], [1, 1], 1), [16, 32, 2, 2], 24, 3);
    // TensorFlow "same" with stride 2: the odd pixel of padding at the end.
    compare_dense(ConvOptions::new_with_padding([2, 2], [(0, 1), (0, 1)], [1, 1], 1), [2, 3, 8, 8], 4, 3);
}

#[test]
fn an_input_without_gradient_gets_none_and_the_weight_still_learns() {
    let device = seeded(Device::flex().autodiff());
    let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 0.5), &device).require_grad();
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let grads = deeptune_kernels::dense_conv2d(x.clone(), w.clone(), options.clone()).sum().backward();
    let theirs = conv2d(x.clone(), w.clone(), None, options).sum().backward();
    assert!(x.grad(&grads).is_none());
    let plain = |t: Tensor<4>| Tensor::<4>::from_data(t.to_data(), &Device::flex());
    assert!(max_difference(plain(w.grad(&grads).unwrap()), plain(w.grad(&theirs).unwrap())) < 1e-3);
}

#[test]
fn without_autodiff_it_is_burns_convolution() {
    let device = seeded(Device::flex());
    let x = Tensor::<4>::random([1, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<4>::random([3, 1, 3, 3], Distribution::Normal(0.0, 1.0), &device);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 3);
    let ours = deeptune_kernels::depthwise_conv2d(x.clone(), w.clone(), options.clone());
    // Sums of 9 products of normal values (up to ~10 in magnitude, an f32 step of ~1e-6 there),
    // added in another order than burn's: a few steps apart at most (1e-6 failed on a rare draw
    // before the draws were seeded).
    assert!(max_difference(ours, conv2d(x, w, None, options)) < 1e-5);
}

#[test]
fn relu_and_relu6_match_burns_activations_and_gradients() {
    use burn::tensor::activation;
    let device = seeded(Device::flex().autodiff());
    // Values on both sides of 0 and 6, and exactly at them (where the gradient is 0, as PyTorch).
    let mut values: Vec<f32> = (0..4000).map(|i| (i as f32 - 1000.0) / 250.0).collect();
    values.extend([0.0, 6.0, -0.0]);
    let n = values.len();
    for (ours, theirs, name) in [
        (
            deeptune_kernels::relu6::<1> as fn(Tensor<1>) -> Tensor<1>,
            activation::relu6::<1> as fn(Tensor<1>) -> Tensor<1>,
            "relu6",
        ),
        (deeptune_kernels::relu::<1>, activation::relu::<1>, "relu"),
    ] {
        let x = Tensor::<1>::from_floats(values.as_slice(), &device).require_grad();
        let weights = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (ours(x.clone()), theirs(x.clone()));
        let forward: f32 = (a.clone() - b.clone()).abs().max().into_scalar::<f32>();
        assert_eq!(forward, 0.0, "{name} forward");
        let ga = x.grad(&(a * weights.clone()).sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let gb = x.grad(&(b * weights).sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for (i, (p, q)) in ga.iter().zip(&gb).enumerate() {
            // At exactly 0 and 6 burn's clamp passes the gradient; PyTorch's hardtanh_backward
            // (what nn.ReLU6 differentiates with) does not, and neither do we.
            if name == "relu6" && (values[i] == 6.0 || values[i] == 0.0) {
                assert_eq!(*p, 0.0);
                continue;
            }
            assert_eq!(p, q, "{name} gradient at {}", values[i]);
        }
    }
}

#[test]
fn silu_matches_burns_activation_and_gradient() {
    use burn::tensor::activation;
    let device = seeded(Device::flex().autodiff());
    let values: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) / 100.0).collect();
    let n = values.len();
    let x = Tensor::<1>::from_floats(values.as_slice(), &device).require_grad();
    let weights = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
    let (ours, theirs) = (deeptune_kernels::silu(x.clone()), activation::silu(x.clone()));
    let forward = (ours.clone() - theirs.clone()).abs().max().into_scalar::<f32>();
    assert!(forward < 1e-5, "silu forward differs by {forward}");
    let ga = x.grad(&(ours * weights.clone()).sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let gb = x.grad(&(theirs * weights).sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
    for (i, (p, q)) in ga.iter().zip(&gb).enumerate() {
        assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "silu gradient at {}: {p} vs {q}", values[i]);
    }
}

/// Batch norm alone, and with ReLU / a clamp at 1.5 (both sides of ReLU6-like clamping) fused
/// in, against burn's batch norm followed by burn's activation.
#[test]
fn batch_norm_training_and_its_gradients_equal_burns() {
    use burn::tensor::activation::relu;
    use burn::tensor::module::batch_norm_train;
    let device = seeded(Device::flex().autodiff());
    let cases = [[4, 6, 5, 7], [16, 3, 1, 1], [2, 8, 12, 12]]
        .into_iter()
        .flat_map(|shape| [None, Some(f32::INFINITY), Some(1.5)].map(|cap| (shape, cap)));
    for (shape, cap) in cases {
        let channels = shape[1];
        // Offset activations, as real ones are.
        let x = Tensor::<4>::random(shape, Distribution::Normal(2.0, 3.0), &device).require_grad();
        let gamma = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.5), &device).require_grad();
        let beta = Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.5), &device).require_grad();
        let (ours, mean, variance) =
            deeptune_kernels::batch_norm_training(x.clone(), gamma.clone(), beta.clone(), 1e-5, cap);
        let mut theirs = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        theirs.output = match cap {
            Some(cap) if cap.is_finite() => relu(theirs.output).clamp_max(cap),
            Some(_) => relu(theirs.output),
            None => theirs.output,
        };
        assert!(
            max_difference(ours.clone(), theirs.output.clone()) < 1e-4,
            "forward differs for {shape:?}, cap {cap:?}"
        );
        let flat = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in flat(mean).iter().zip(flat(theirs.mean)).chain(flat(variance).iter().zip(flat(theirs.variance))) {
            assert!(
                (a - b).abs() < 1e-4 * b.abs().max(1.0),
                "statistics differ for {shape:?}, cap {cap:?}: {a} vs {b}"
            );
        }
        let weights = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let ours_grads = (ours * weights.clone()).sum().backward();
        let theirs_grads = (theirs.output * weights).sum().backward();
        let plain = |t: Tensor<4>| Tensor::<4>::from_data(t.to_data(), &Device::flex());
        let dx = max_difference(plain(x.grad(&ours_grads).unwrap()), plain(x.grad(&theirs_grads).unwrap()));
        assert!(dx < 1e-4, "input gradient differs by {dx} for {shape:?}, cap {cap:?}");
        let context = format!("{shape:?}, cap {cap:?}");
        assert_norm_parameter_gradients_equal(&gamma, &beta, &ours_grads, &theirs_grads, &context);
    }
}

/// γ's and β's gradients in our batch norm's graph and in burn's, equal to 1e-3 (relative above
/// 1).
fn assert_norm_parameter_gradients_equal(
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    ours: &burn::tensor::Gradients,
    theirs: &burn::tensor::Gradients,
    context: &str,
) {
    let flat = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
    for (param, name) in [(gamma, "gamma"), (beta, "beta")] {
        let (a, b) = (flat(param.grad(ours).unwrap()), flat(param.grad(theirs).unwrap()));
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "{name} gradient differs for {context}: {a} vs {b}");
        }
    }
}

/// A residual block's end, `act(bn(x) + residual)` in one operation, against burn's batch norm,
/// sum and activation: the output and the gradients of all four inputs (the residual's is the
/// activation's gradient, which must also not leak through the clamped outputs).
#[test]
fn batch_norm_with_residual_and_its_gradients_equal_burns() {
    use burn::tensor::activation::relu;
    use burn::tensor::module::batch_norm_train;
    let device = seeded(Device::flex().autodiff());
    let cases = [[4, 6, 5, 7], [2, 8, 12, 12]]
        .into_iter()
        .flat_map(|shape| [None, Some(f32::INFINITY), Some(1.5)].map(|cap| (shape, cap)));
    for (shape, cap) in cases {
        let channels = shape[1];
        let x = Tensor::<4>::random(shape, Distribution::Normal(2.0, 3.0), &device).require_grad();
        let residual = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let gamma = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.5), &device).require_grad();
        let beta = Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.5), &device).require_grad();
        let (ours, _, _) = deeptune_kernels::batch_norm_residual_training(
            x.clone(),
            gamma.clone(),
            beta.clone(),
            residual.clone(),
            1e-5,
            cap,
        );
        let sum = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5).output + residual.clone();
        let theirs = match cap {
            Some(cap) if cap.is_finite() => relu(sum).clamp_max(cap),
            Some(_) => relu(sum),
            None => sum,
        };
        let forward = max_difference(ours.clone(), theirs.clone());
        assert!(forward < 1e-4, "forward differs by {forward} for {shape:?}, cap {cap:?}");
        let weights = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let ours_grads = (ours * weights.clone()).sum().backward();
        let theirs_grads = (theirs * weights).sum().backward();
        let plain = |t: Tensor<4>| Tensor::<4>::from_data(t.to_data(), &Device::flex());
        for (input, name) in [(&x, "input"), (&residual, "residual")] {
            let (a, b) = (plain(input.grad(&ours_grads).unwrap()), plain(input.grad(&theirs_grads).unwrap()));
            let zeros = |t: &Tensor<4>| t.clone().equal_elem(0.0).int().sum().into_scalar::<i64>();
            if cap.is_some() && name == "residual" {
                assert!(zeros(&b) > 0, "the clamp must cut some gradients ({shape:?}, cap {cap:?})");
            }
            let difference = max_difference(a, b);
            assert!(difference < 1e-4, "{name} gradient differs by {difference} for {shape:?}, cap {cap:?}");
        }
        let context = format!("{shape:?}, cap {cap:?}");
        assert_norm_parameter_gradients_equal(&gamma, &beta, &ours_grads, &theirs_grads, &context);
    }
}

#[test]
fn inference_conv_with_scale_shift_and_relu_equals_burns_composition() {
    use burn::tensor::activation::{relu, relu6, silu};
    use deeptune_kernels::EpilogueActivation;
    let device = seeded(Device::flex());
    let cases = [
        (ConvOptions::new([1, 1], [1, 1], [1, 1], 1), [3, 5, 9, 8], [7, 5, 3, 3]),
        (ConvOptions::new([2, 2], [0, 0], [1, 1], 1), [16, 6, 4, 4], [5, 6, 1, 1]),
        // Depthwise (our kernel with the epilogue in its row copy).
        (ConvOptions::new([1, 1], [1, 1], [1, 1], 6), [2, 6, 7, 7], [6, 1, 3, 3]),
    ];
    for (options, input, weight_shape) in cases {
        let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random(weight_shape, Distribution::Normal(0.0, 0.5), &device);
        let channels = weight_shape[0];
        let scale = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.5), &device);
        let shift = Tensor::<1>::random([channels], Distribution::Normal(0.0, 1.0), &device);
        let affine = conv2d(x.clone(), w.clone(), None, options.clone()) * scale.clone().reshape([1, channels, 1, 1])
            + shift.clone().reshape([1, channels, 1, 1]);
        let cases = [
            (EpilogueActivation::Identity, affine.clone()),
            (EpilogueActivation::Relu { cap: f32::INFINITY }, relu(affine.clone())),
            (EpilogueActivation::Relu { cap: 6.0 }, relu6(affine.clone())),
            (EpilogueActivation::Silu, silu(affine.clone())),
        ];
        for (activation, expected) in cases {
            let ours = deeptune_kernels::conv2d_scale_shift(
                x.clone(),
                w.clone(),
                scale.clone(),
                shift.clone(),
                options.clone(),
                activation,
                None,
            );
            assert!(max_difference(ours, expected) < 1e-4, "differs for {options:?} with {activation:?}");
        }
        // With a skip connection added before the activation (burn's composition on the
        // depthwise case, which has no fused residual).
        let residual = Tensor::<4>::random(affine.dims(), Distribution::Normal(0.0, 1.0), &device);
        let with_residual = affine.clone() + residual.clone();
        let cases = [
            (EpilogueActivation::Identity, with_residual.clone()),
            (EpilogueActivation::Relu { cap: f32::INFINITY }, relu(with_residual.clone())),
            (EpilogueActivation::Silu, silu(with_residual.clone())),
        ];
        for (activation, expected) in cases {
            let ours = deeptune_kernels::conv2d_scale_shift(
                x.clone(),
                w.clone(),
                scale.clone(),
                shift.clone(),
                options.clone(),
                activation,
                Some(residual.clone()),
            );
            let difference = max_difference(ours, expected);
            assert!(difference < 1e-4, "differs by {difference} for {options:?} with {activation:?} and a residual");
        }
    }
}

#[test]
fn max_pooling_and_its_gradient_equal_burns() {
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;
    let device = seeded(Device::flex().autodiff());
    for (shape, kernel, stride, padding) in
        [([2, 3, 12, 11], 3, 2, 1), ([4, 2, 8, 8], 2, 2, 0), ([1, 5, 7, 9], 3, 1, 1)]
    {
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let ours = deeptune_kernels::max_pool2d(x.clone(), [kernel; 2], [stride; 2], [padding; 2]);
        let options = MaxPoolOptions::new([kernel; 2]).with_stride([stride; 2]).with_padding([padding; 2]);
        let theirs = max_pool2d(x.clone(), options);
        assert_eq!(ours.dims(), theirs.dims());
        assert_eq!(max_difference(ours.clone(), theirs.clone()), 0.0, "forward differs for {shape:?}");
        let weights = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
        let a = x.grad(&(ours * weights.clone()).sum().backward()).unwrap();
        let b = x.grad(&(theirs * weights).sum().backward()).unwrap();
        let plain = |t: Tensor<4>| Tensor::<4>::from_data(t.to_data(), &Device::flex());
        assert!(max_difference(plain(a), plain(b)) < 1e-6, "gradient differs for {shape:?}");
    }
}
