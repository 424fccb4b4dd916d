"""The frozen teacher: loading, inference-mode embeddings, checksums and clear errors."""
import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.symbols import get_symbol
from vargface.fingerprint import file_checksum
from vargface.symbols.checkpoint import checkpoint_checksum
from vargface.train.teacher import Teacher


def save_tiny(prefix, emb_size=32, input_size=32, seed=0, epoch=1):
    """A tiny VarGFaceNet checkpoint with trained-looking (non-default) BatchNorm statistics."""
    sym = get_symbol("vargfacenet", input_size=input_size, multiplier=0.25, emb_size=emb_size)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (2, 3, input_size, input_size))], for_training=False)
    mx.random.seed(seed)
    mod.init_params(mx.init.Xavier(magnitude=2))
    arg, aux = mod.get_params()
    rng = np.random.RandomState(seed)
    for name, value in aux.items():
        value[:] = rng.uniform(0.5, 1.5, value.shape) if name.endswith("var") else rng.randn(*value.shape) * 0.1
    mx.model.save_checkpoint(prefix, epoch, sym, arg, aux)
    return f"{prefix},{epoch}", sym, arg, aux


def test_teacher_embeds_in_inference_mode_and_resizes(tmp_path):
    model, sym, arg, aux = save_tiny(str(tmp_path / "t"))
    teacher = Teacher(model)
    assert (teacher.emb_size, teacher.input_size) == (32, 32)
    images = mx.nd.array(np.random.RandomState(1).uniform(0, 255, (5, 3, 32, 32)))
    # reference: the same graph bound for inference, i.e. BatchNorm with the stored moving statistics
    ex = sym.bind(mx.cpu(), {"data": images, **arg}, aux_states={k: v.copy() for k, v in aux.items()},
                  grad_req="null")
    expected = ex.forward(is_train=False)[0].asnumpy()
    np.testing.assert_allclose(teacher.embed(images).asnumpy(), expected, rtol=1e-4, atol=1e-4)
    # BatchNorm runs on the stored moving statistics (in training mode it would ignore them)
    mx.model.save_checkpoint(str(tmp_path / "t"), 2, sym, arg, {k: v * 1.5 for k, v in aux.items()})
    assert not np.allclose(Teacher(str(tmp_path / "t") + ",2").embed(images).asnumpy(), expected, atol=1e-3)
    # per-sample independence: any batch size gives the same embedding
    np.testing.assert_allclose(teacher.embed(images[:2]).asnumpy(), expected[:2], rtol=1e-4, atol=1e-4)
    # inputs of another size are resized to the teacher's input
    assert teacher.embed(mx.nd.zeros((3, 3, 40, 40))).shape == (3, 32)


def test_teacher_errors_name_the_checkpoint(tmp_path):
    with pytest.raises(VargfaceError, match=r"--teacher .*nope,3.*does not exist"):
        Teacher(str(tmp_path / "nope") + ",3")
    with pytest.raises(VargfaceError, match="--teacher"):
        Teacher(str(tmp_path / "nope"))
    # a graph without fc1_output (e.g. a classifier) is refused
    data = mx.sym.Variable("data")
    sym = mx.sym.FullyConnected(mx.sym.flatten(data), num_hidden=4, name="fc")
    mx.model.save_checkpoint(str(tmp_path / "cls"), 2, sym, {"fc_weight": mx.nd.zeros((4, 12)),
                                                           "fc_bias": mx.nd.zeros(4)}, {})
    with pytest.raises(VargfaceError, match="fc1_output"):
        Teacher(str(tmp_path / "cls") + ",2")


def test_checksums_see_changes_anywhere(tmp_path):
    big = tmp_path / "big.bin"
    payload = bytearray(np.random.RandomState(0).bytes(5 << 20))
    big.write_bytes(payload)
    first = file_checksum(str(big))
    assert file_checksum(str(big)) == first
    for offset in (0, len(payload) // 2, len(payload) - 1):  # head, middle, tail chunks
        changed = bytearray(payload)
        changed[offset] ^= 1
        big.write_bytes(changed)
        assert file_checksum(str(big)) != first
    big.write_bytes(payload + b"x")
    assert file_checksum(str(big)) != first
    # whole=True also sees a change between the sampled chunks
    changed = bytearray(payload)
    changed[len(payload) // 4] ^= 1
    big.write_bytes(payload)
    whole = file_checksum(str(big), whole=True)
    big.write_bytes(changed)
    assert file_checksum(str(big)) == first and file_checksum(str(big), whole=True) != whole
    model, *_ = save_tiny(str(tmp_path / "a"), seed=0)
    save_tiny(str(tmp_path / "b"), seed=1)
    assert checkpoint_checksum(str(tmp_path / "a"), 1) != checkpoint_checksum(str(tmp_path / "b"), 1)


def test_teacher_features_are_the_graphs_taps(tmp_path):
    from vargface.symbols.taps import tap_symbol

    model, sym, arg, aux = save_tiny(str(tmp_path / "t"))
    teacher = Teacher(model, taps=("stride8", "embedding"))
    images = mx.nd.array(np.random.RandomState(2).uniform(0, 255, (3, 3, 32, 32)))
    features = teacher.features(images)
    assert list(features) == ["stride8", "embedding"] and teacher.tap_shapes["stride8"] == (32, 4, 4)
    assert features["stride8"].shape == (3, 32, 4, 4)
    np.testing.assert_allclose(features["embedding"].asnumpy(), Teacher(model).embed(images).asnumpy(), rtol=1e-4,
                               atol=1e-4)
    internal = tap_symbol(sym, 32, "stride8")
    ex = internal.bind(mx.cpu(), {"data": images, **{k: v for k, v in arg.items() if k in internal.list_arguments()}},
                       aux_states={k: aux[k].copy() for k in internal.list_auxiliary_states()}, grad_req="null")
    np.testing.assert_allclose(features["stride8"].asnumpy(), ex.forward(is_train=False)[0].asnumpy(), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(VargfaceError, match=r"--teacher .*has no tap 'stride32' \(it has embedding, stride2"):
        Teacher(model, taps=("stride32",))


def test_teacher_and_evaluator_see_the_same_pixels_at_another_input_size(tmp_path):
    """A 112x112 face file fed to a 32x32 teacher (the student's batch) and to `vargface embed`: one resize rule."""
    from vargface.data.images import encode_jpeg
    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.images import read_image

    model, *_ = save_tiny(str(tmp_path / "t"))
    path = tmp_path / "face.jpg"
    path.write_bytes(encode_jpeg(np.random.RandomState(2).randint(0, 256, (112, 112, 3)).astype(np.uint8)))
    student_batch = mx.nd.array(read_image(path)[None].transpose(0, 3, 1, 2).astype(np.float32))
    assert student_batch.shape == (1, 3, 112, 112)
    taught = Teacher(model).embed(student_batch).asnumpy()
    embedder = FaceEmbedder(str(tmp_path / "t"), 1, batch_size=1)
    np.testing.assert_array_equal(taught, embedder.forward(embedder.prepare([read_image(path)])))
    taught = taught.astype(np.float64) / np.linalg.norm(taught.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_array_equal(taught.astype(np.float32), embedder.embed_files([str(path)], flip=False))
