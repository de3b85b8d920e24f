"""TF Serving's REST JSON ↔ tensors: request formats, binary values, errors and float output."""
import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from serving import json_tensor
from serving.errors import InvalidArgument

RAW = {"title": tf.string, "image_bytes": tf.string}


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_row_and_columnar_requests_give_the_same_tensors():
    image = bytes(range(256))
    row = {"instances": [{"title": "Navy Shirt", "image_bytes": _b64(image)}, {"title": "Ümlaut Watch", "image_bytes": _b64(b"x")}]}
    columnar = {"inputs": {"title": ["Navy Shirt", "Ümlaut Watch"], "image_bytes": [_b64(image), _b64(b"x")]}}
    row_format, from_rows = json_tensor.request_tensors(row, RAW)
    columnar_format, from_columns = json_tensor.request_tensors(columnar, RAW)
    assert (row_format, columnar_format) == (json_tensor.ROW, json_tensor.COLUMNAR)
    for tensors in (from_rows, from_columns):
        assert tensors["title"].tolist() == ["Navy Shirt".encode(), "Ümlaut Watch".encode()]
        assert tensors["image_bytes"].tolist() == [image, b"x"]
        assert tensors["title"].shape == (2,)


def test_a_single_input_takes_plain_values_and_numbers_keep_their_shape():
    _, tensors = json_tensor.request_tensors({"instances": [[1, 2, 3], [4, 5, 6]]}, {"ids": tf.int64})
    assert tensors["ids"].dtype == np.int64 and tensors["ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    _, tensors = json_tensor.request_tensors({"inputs": [[0.5, 1e-3], [2, float("nan")]]}, {"x": tf.float32})
    assert tensors["x"].dtype == np.float32 and tensors["x"].shape == (2, 2) and np.isnan(tensors["x"][1, 1])


@pytest.mark.parametrize(
    "document, message",
    [
        ({"instances": [], }, "No values in 'instances' array"),
        ({"instances": {"title": "a"}}, "Excepting 'instances' to be an list/array"),
        ({"instances": [{"title": "a"}], "inputs": {}}, "expecting only one of 'inputs' or 'instances'"),
        ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
        ({"instances": ["a", "b"]}, "instances is a plain list, but expecting list of objects"),
        ({"instances": [{"title": "a"}]}, "must only have keys: image_bytes,title"),
        ({"instances": [{"title": "a", "image_bytes": "x", "price": 3}]}, "does not have named input: price"),
        ({"instances": [{"title": 3, "image_bytes": "x"}]}, "JSON Value: 3 Type: Number is not of expected type: string"),
        ({"instances": [{"title": "a", "image_bytes": {"b64": "***"}}]}, "Unable to base64 decode"),
        ({"instances": [{"title": "a", "image_bytes": {"b64": "eA==", "x": 1}}]}, "not formatted correctly for base64"),
        ({"instances": [{"title": "a", "image_bytes": "x"}, {"title": ["a"], "image_bytes": "x"}]}, "Expecting shape [] but got: [1]"),
        ({"inputs": ["a"]}, "inputs is a plain value/list, but expecting an object"),
        ({"inputs": {"title": ["a"]}}, "Missing named input: image_bytes in 'inputs' object."),
        ({"inputs": {"title": [["a", "b"], ["c"]], "image_bytes": ["x"]}}, "Encountered list at unexpected size: 1 at level: 1"),
    ],
)
def test_malformed_requests_say_what_is_wrong(document, message):
    with pytest.raises(InvalidArgument, match=None) as raised:
        json_tensor.request_tensors(document, RAW)
    assert message in raised.value.message
    assert raised.value.http_status == 400


def test_numbers_are_checked_against_the_input_type():
    with pytest.raises(InvalidArgument, match="is not of expected type: int64"):
        json_tensor.request_tensors({"instances": [1.5]}, {"ids": tf.int64})
    with pytest.raises(InvalidArgument, match="is not of expected type: int32"):
        json_tensor.request_tensors({"instances": [2**40]}, {"ids": tf.int32})
    with pytest.raises(InvalidArgument, match="without loss of precision"):
        json_tensor.request_tensors({"instances": [2**40 + 1]}, {"x": tf.float32})


@pytest.mark.parametrize(
    "body, message",
    [(b"", "The document is empty"), (b"{bad", "JSON Parse error"), (b"[1]", "Is not object"),
     (b'{"signature_name": 3, "instances": [1]}', "'signature_name' key must be a string value")],
)
def test_unparseable_bodies_are_rejected(body, message):
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.parse_request(body)
    assert message in raised.value.message


def test_responses_follow_the_request_format_and_write_floats_as_tf_serving_does():
    outputs = {
        "classes": np.array([[b"Shirts", b"Tshirts"], [b"Watches", b"Shirts"]], dtype=object),
        "scores": np.array([[0.5, 1 / 3], [3.0, float("nan")]], dtype=np.float32),
        "thumbnail_bytes": np.array([b"\xff\xd8", b"\x00"], dtype=object),
    }
    row = json.loads(json_tensor.dumps(json_tensor.response_json(outputs, json_tensor.ROW)))
    assert row["predictions"][0] == {"classes": ["Shirts", "Tshirts"], "scores": [0.5, 0.333333343],
                                     "thumbnail_bytes": {"b64": base64.b64encode(b"\xff\xd8").decode()}}
    assert row["predictions"][1]["scores"][0] == 3.0 and np.isnan(row["predictions"][1]["scores"][1])
    text = json_tensor.dumps(json_tensor.response_json({"scores": outputs["scores"]}, json_tensor.COLUMNAR))
    assert text == '{"outputs":[[0.5,0.333333343],[3.0,NaN]]}'  # one output: no name; NaN as a bare token
    single_row = json_tensor.response_json({"scores": outputs["scores"]}, json_tensor.ROW)
    assert single_row == {"predictions": [[0.5, 0.333333343], [3.0, pytest.approx(float("nan"), nan_ok=True)]]}


def test_row_responses_need_one_batch_size():
    with pytest.raises(InvalidArgument, match="inconsistent batch size"):
        json_tensor.response_json({"a": np.zeros(2), "b": np.zeros(3)}, json_tensor.ROW)


def test_a_model_error_keeps_its_code_and_the_line_that_says_what_is_wrong():
    from serving.errors import from_tf_error

    @tf.function
    def decode(data):
        return tf.io.decode_image(data)

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        decode(tf.constant(b"not an image"))
    error = from_tf_error(raised.value)
    assert error.http_status == 400
    assert error.message.startswith("Unknown image file format.")


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"instances": [{"title": "\\ud800", "image_bytes": "x"}]}', "a lone surrogate \\ud800 at character 0"),
        (b'{"instances": [{"title": "ok \\udfff", "image_bytes": "x"}]}', "a lone surrogate \\udfff at character 3"),
        (b"[" * 100_000, "nests arrays or objects too deeply"),
        (b'{"inputs": {"title": ' + b"[" * 65 + b'"a"' + b"]" * 65 + b', "image_bytes": ["x"]}}', "lists nested 65 levels deep"),
        (b'{"instances": [' + b"1" * 4301 + b"]}", "a number has more than 4300 digits"),
        (b'{"instances": [{"title": "a", "image_bytes": ' + b"9" * 4000 + b"}]}", "is not of expected type: string"),
    ],
)
def test_hostile_json_is_invalid_argument_about_the_input(body, message):
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors(json_tensor.parse_request(body), RAW)
    assert message in raised.value.message and len(raised.value.message) < 600


def test_a_surrogate_pair_is_one_character():
    _, tensors = json_tensor.request_tensors(
        json_tensor.parse_request(b'{"instances": [{"title": "\\ud83d\\udc55 Shirt", "image_bytes": "x"}]}'), RAW)
    assert tensors["title"].tolist() == ["👕 Shirt".encode()]


def test_boolean_inputs_take_json_booleans_only_and_errors_name_the_json_type():
    _, tensors = json_tensor.request_tensors({"instances": [True, False]}, {"flag": tf.bool})
    assert tensors["flag"].dtype == np.bool_ and tensors["flag"].tolist() == [True, False]
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors({"instances": [1]}, {"flag": tf.bool})
    assert raised.value.message.endswith("Error: JSON Value: 1 Type: Number is not of expected type: bool")
    for value, name in ((True, "True"), (False, "False"), (None, "Null")):
        with pytest.raises(InvalidArgument) as raised:
            json_tensor.request_tensors({"instances": [{"title": value, "image_bytes": "x"}]}, RAW)
        assert f" Type: {name} is not of expected type: string" in raised.value.message


@pytest.mark.parametrize("value, dtype", [(2**40 + 1, tf.float32), (1e300, tf.float32), (2**60 + 1, tf.float64)])
def test_a_number_a_float_input_cannot_hold_is_refused_as_tf_serving_words_it(value, dtype):
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors({"instances": [value]}, {"x": dtype})
    assert raised.value.message.endswith(
        f"Error: Cannot convert JSON value: {value} to {dtype.name} without loss of precision.")


@pytest.mark.parametrize("document, count", [
    ({"instances": [{"title": "a"}] * 3}, 3),
    ({"inputs": {"title": ["a", "b"], "image_bytes": [_b64(b"x"), _b64(b"y")]}}, 2),
    ({"inputs": ["a", "b", "c", "d"]}, 4),
    ({"inputs": {"title": ["a"], "image_bytes": [_b64(b"x"), _b64(b"y")]}}, None),  # disagree: request_tensors says so
    ({"inputs": {"title": "a"}}, None),
    ({"instances": {"title": "a"}}, None),
    ({"instances": [1], "inputs": [1, 2]}, None),
    ({}, None),
])
def test_the_declared_batch_is_counted_from_the_parsed_document_as_request_tensors_finds_it(document, count):
    assert json_tensor.declared_batch_size(document) == count
    if count is not None:
        dtypes = {"title": tf.string} if isinstance(document.get("inputs"), list) else RAW
        if "instances" in document:
            dtypes = {"title": tf.string}
        _, tensors = json_tensor.request_tensors(document, dtypes)
        assert {array.shape[0] for array in tensors.values()} == {count}


@pytest.mark.parametrize("dtype, digits", [(tf.float32, 24), (tf.float64, 53)])
def test_integers_a_float_input_holds_exactly_are_taken_up_to_tf_servings_bound(dtype, digits):
    """TF Serving's IsLosslessDecimal: |n| ≤ 2^digits − 1 is taken, 2^digits is refused."""
    largest = 2**digits - 1
    _, tensors = json_tensor.request_tensors({"instances": [largest, -largest]}, {"x": dtype})
    assert tensors["x"].tolist() == [largest, -largest]
    for value in (2**digits, -(2**digits)):
        with pytest.raises(InvalidArgument, match="without loss of precision"):
            json_tensor.request_tensors({"instances": [value]}, {"x": dtype})


def test_a_list_deeper_than_the_first_elements_shape_is_refused_not_a_crash():
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors({"instances": [[1.0, 2.0], [3.0, [4.0]]]}, {"x": tf.float32})
    assert raised.value.message.endswith("Error: Encountered list at unexpected level: 1 expected < 1")


def test_a_one_product_answer_is_a_one_row_prediction_list():
    outputs = {"scores": np.array([[0.25, 0.75]], np.float32), "ids": np.array([[b"a", b"b"]], object)}
    assert json_tensor.response_json(outputs, json_tensor.ROW) == {
        "predictions": [{"scores": [0.25, 0.75], "ids": ["a", "b"]}]}
    assert json_tensor.response_json({"scores": outputs["scores"]}, json_tensor.COLUMNAR) == {"outputs": [[0.25, 0.75]]}


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"[1]", "JSON Value: [1] Is not object"),
    (b"[" * 100_000, "JSON Parse error: the document nests arrays or objects too deeply"),
    (b'{"signature_name": 3, "instances": [1]}',
     """JSON Value: {"signature_name":3,"instances":[1]} not formatted correctly. 'signature_name' key must be a string value."""),
    (b'{"signature_name": null, "instances": [1]}',
     """JSON Value: {"signature_name":null,"instances":[1]} not formatted correctly. 'signature_name' key must be a string value."""),
    (b'{"instances": [' + b"1" * 4301 + b"]}", "JSON Parse error: a number has more than 4300 digits"),
])
def test_a_refused_body_gets_tf_servings_whole_message(body, message):
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.parse_request(body)
    assert raised.value.message == message


def test_a_document_without_instances_or_inputs_gets_tf_servings_words():
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors({"signature_name": "serving_default"}, RAW)
    assert raised.value.message == "Missing 'inputs' or 'instances' key"


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_an_integer_input_takes_its_whole_range_and_nothing_past_it(dtype):
    low, high = dtype.min, dtype.max
    _, tensors = json_tensor.request_tensors({"instances": [low, high]}, {"ids": dtype})
    assert tensors["ids"].tolist() == [low, high]
    for value in (low - 1, high + 1):
        with pytest.raises(InvalidArgument, match=f"is not of expected type: {dtype.name}"):
            json_tensor.request_tensors({"instances": [value]}, {"ids": dtype})


def _nested(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


STR = {"str_tensor": tf.string}


@pytest.mark.parametrize("document, dtypes, message", [
    ({"instances": [], "signature_name": "s"}, RAW,
     """JSON Value: {"instances":[],"signature_name":"s"} No values in 'instances' array"""),
    ({"instances": {"title": "a"}}, RAW, """JSON Value: {"instances":{"title":"a"}} Excepting 'instances' to be an list/array"""),
    ({"instances": ["a", "b"]}, RAW, "instances is a plain list, but expecting list of objects as multiple input tensors "
                                     "required as per tensorinfo_map"),
    ({"instances": [{"title": "a"}]}, RAW, """Failed to process element: 0 of 'instances' list. JSON object: """
                                           """{"title":"a"} must only have keys: image_bytes,title"""),
    ({"instances": [{"title": "a", "image_bytes": "x", "price": 3}]}, RAW,
     "Failed to process element: 0 key: price of 'instances' list. Error: JSON object: does not have named input: price"),
    # TF Serving's MultipleNamedTensorErrors: objects and lists mixed in one instances list, either way round.
    ({"instances": [{"title": "a", "image_bytes": "x"}, ["a", "x"]]}, RAW, "Expecting object but got list at item 1 of input list"),
    ({"instances": [{"title": "a", "image_bytes": "x"}, _b64(b"x")]}, RAW, "Expecting object but got list at item 1 of input list"),
    ({"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}, STR, "Expecting value/list but got object at item 1 of input list"),
    ({"inputs": ["a"]}, RAW, "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                             "as per tensorinfo_map"),
    ({"inputs": {"title": ["a"]}}, RAW, "Missing named input: image_bytes in 'inputs' object."),
    ({"inputs": {"title": [["a", "b"], ["c"]], "image_bytes": ["x"]}}, RAW,
     "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ({"inputs": [[1.0, 2.0], 3.0]}, {"x": tf.float32}, "JSON Value: 3.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ({"inputs": {"title": "a", "image_bytes": {"b64": "eA==", "x": 1}}}, RAW,
     """JSON Value: {"b64":"eA==","x":1} not formatted correctly for base64 data"""),
    ({"inputs": {"title": "a", "image_bytes": {"b64": "***"}}}, RAW, "Unable to base64 decode"),
    ({"inputs": [{"k": 1}]}, {"x": tf.int64}, """JSON Value: {"k":1} Type: Object is not of expected type: int64"""),
    ({"inputs": [True]}, {"x": tf.int64}, "JSON Value: true Type: True is not of expected type: int64"),
    ({"inputs": [1]}, {"x": tf.complex64}, "Conversion of JSON Value: 1 to type: complex64 is not supported"),
    ({"inputs": _nested("a", 65)}, STR, "JSON Value: lists nested 65 levels deep, more than the 64 dimensions a tensor can have"),
    ({"instances": [_nested(1.0, 64)]}, {"x": tf.float32},
     "Failed to process element: 0 key: x of 'instances' list. Error: JSON Value: lists nested 64 levels deep in one "
     "instance: instances stack to more than the 64 dimensions a tensor can have"),
])
def test_a_refused_request_gets_tf_servings_whole_message(document, dtypes, message):
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors(document, dtypes)
    assert raised.value.message == message


def test_a_string_for_a_float_input_is_a_type_error():
    # Not the whole message: TF Serving names the type "float" where this server says "float32".
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors({"inputs": ["a"]}, {"x": tf.float32})
    assert raised.value.message.startswith('JSON Value: "a" Type: String is not of expected type: ')


def test_a_body_that_is_not_json_says_json_parse_error_first():
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.parse_request(b"{bad")
    assert raised.value.message.startswith("JSON Parse error: ")


def test_a_lone_surrogate_is_refused_with_the_advice_to_pair_it():
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors(json_tensor.parse_request(b'{"inputs": {"title": "\\ud800", "image_bytes": "x"}}'), RAW)
    assert raised.value.message == (
        'JSON Value: "\\ud800" is not valid Unicode: a lone surrogate \\ud800 at character 0 (escape a character '
        "outside the Basic Multilingual Plane as a surrogate pair)")


@pytest.mark.parametrize("length, shown", [(198, '"' + "a" * 198 + '"'), (199, '"' + "a" * 199)])
def test_a_value_in_an_error_is_shown_up_to_200_characters_then_cut(length, shown):
    """A 200-character value is shown whole; a longer one by its first 200 characters and "..."."""
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors({"inputs": ["a" * length]}, {"x": tf.int64})
    suffix = "" if length == 198 else "..."
    assert raised.value.message == f"JSON Value: {shown}{suffix} Type: String is not of expected type: int64"


def test_a_value_too_deep_to_print_still_gets_a_one_line_refusal():
    # The deepest base64 field the parser takes: printing it in the message would overflow the stack.
    for depth in range(1000, 900, -1):
        body = b'{"inputs": {"x": {"b64": ' + b"[" * depth + b"]" * depth + b"}}}"
        try:
            document = json_tensor.parse_request(body)
            break
        except InvalidArgument:
            continue
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.request_tensors(document, {"x": tf.string})
    assert raised.value.message == "JSON Value: (a value nested too deeply to show) not formatted correctly for base64 data"


def test_tensors_of_the_most_dimensions_numpy_allows_are_taken():
    _, tensors = json_tensor.request_tensors({"inputs": _nested(1.0, 64)}, {"x": tf.float32})
    assert tensors["x"].shape == (1,) * 64
    _, tensors = json_tensor.request_tensors({"instances": [_nested(1.0, 63)]}, {"x": tf.float32})
    assert tensors["x"].shape == (1,) * 64


def test_empty_lists_give_a_zero_sized_dimension():
    """As TF Serving's GetDenseTensorShape: an empty list ends the shape."""
    _, tensors = json_tensor.request_tensors({"instances": [[], []]}, {"x": tf.float32})
    assert tensors["x"].shape == (2, 0) and tensors["x"].dtype == np.float32
    _, tensors = json_tensor.request_tensors({"inputs": []}, {"x": tf.int64})
    assert tensors["x"].shape == (0,)


def test_base64_scalars_and_lists_of_one_string_input():
    """TF Serving's SingleUnnamedTensorBase64Scalars and SingleUnnamedTensorBase64Lists."""
    _, tensors = json_tensor.request_tensors({"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}, STR)
    assert tensors["str_tensor"].tolist() == [b"hello", b"world"]
    _, tensors = json_tensor.request_tensors({"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}, STR)
    assert tensors["str_tensor"].shape == (2, 1) and tensors["str_tensor"].tolist() == [[b"hello"], [b"world"]]


def test_the_largest_float_a_float_input_holds_is_taken():
    """IsLosslessDecimal: a decimal up to the type's max (and down to its lowest) is taken; past it is refused."""
    largest = float(np.finfo(np.float32).max)
    _, tensors = json_tensor.request_tensors({"instances": [largest, -largest]}, {"x": tf.float32})
    assert tensors["x"].tolist() == [largest, -largest]
    with pytest.raises(InvalidArgument, match="without loss of precision"):
        json_tensor.request_tensors({"instances": [largest * 1.0001]}, {"x": tf.float32})


@pytest.mark.parametrize("outputs, message", [
    ({}, "Cannot convert empty tensor map to JSON"),
    ({"a": np.array(1.0, np.float32)}, "Tensor name: a has no shape information "),
    # TF Serving's FromJsonMultipleNamedTensorsErrors.
    ({"int_tensor": np.zeros((2, 3), np.int32), "str_tensor": np.array([[b"foo", b"bar", b"baz"]], object)},
     "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"),
])
def test_outputs_a_row_answer_cannot_hold_get_tf_servings_whole_message(outputs, message):
    with pytest.raises(InvalidArgument) as raised:
        json_tensor.response_json(outputs, json_tensor.ROW)
    assert raised.value.message == message


def test_a_columnar_answer_names_each_of_several_outputs():
    """TF Serving's FromJsonMultipleNamedTensors, columnar."""
    outputs = {"double_scalar_tensor": np.array([8.0, 9.0]), "str_tensor_bytes": np.array([[b"hello"], [b"tf"]], object)}
    assert json_tensor.response_json(outputs, json_tensor.COLUMNAR) == {"outputs": {
        "double_scalar_tensor": [8.0, 9.0], "str_tensor_bytes": [[{"b64": "aGVsbG8="}], [{"b64": "dGY="}]]}}


def test_float_outputs_are_written_with_six_digits_when_that_reads_back():
    """TF Serving's FromJsonSingleFloatTensorSixDigitPrecision and ...NonFinite: no float32 noise digits."""
    outputs = {"float_tensor": np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32)}
    written = json.loads(json_tensor.dumps(json_tensor.response_json(outputs, json_tensor.ROW)))
    assert written == {"predictions": [[9e06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}  # exactly these doubles
    outputs = {"float_tensor": np.array([[np.nan, np.inf], [3, -np.inf]], np.float32)}
    text = json_tensor.dumps(json_tensor.response_json(outputs, json_tensor.ROW))
    assert text == '{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'


def test_every_float16_output_reads_back_as_the_same_float16():
    values = np.arange(2**16, dtype=np.uint16).view(np.float16)
    values = values[np.isfinite(values)]
    written = json.loads(json_tensor.dumps(json_tensor.response_json({"x": values}, json_tensor.COLUMNAR)))["outputs"]
    assert np.array_equal(np.array(written, np.float16), values)


def test_a_string_output_that_is_not_utf8_is_written_with_replacement_characters():
    outputs = {"classes": np.array([b"Caf\xe9", b"Shirts"], object)}
    assert json_tensor.response_json(outputs, json_tensor.ROW) == {"predictions": ["Caf\ufffd", "Shirts"]}
