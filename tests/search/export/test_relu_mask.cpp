#include "tests/torch_catch.h"

#include <sys/wait.h>

#include <cstdlib>
#include <functional>
#include <sstream>

#include "layers/gate.h"
#include "layers/site.h"
#include "search/export/cost.h"
#include "search/export/relu_mask.h"
#include "tests/search/export/export_fixtures.h"

using namespace autorep;
using namespace autorep::test::export_fixtures;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;
using exports::ExportJson;
using autorep::test::read_text;

TEST_CASE("sha256 matches the FIPS 180-2 test vectors", "[export]") {
  CHECK(exports::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(exports::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(exports::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(exports::sha256_hex(std::string(1000000, 'a')) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // 55/56/64 bytes: the padding boundary cases.
  CHECK(exports::sha256_hex(std::string(55, 'a')) == "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  CHECK(exports::sha256_hex(std::string(56, 'a')) == "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  CHECK(exports::sha256_hex(std::string(64, 'a')) == "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
  const auto dir = fresh_dir("sha");
  std::string big(200000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + 3);
  write_text(dir / "f.bin", big);
  CHECK(exports::sha256_file((dir / "f.bin").string()) == exports::sha256_hex(big));
  write_text(dir / "abc", "abc");
  CHECK(exports::sha256_file((dir / "abc").string()) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK_THROWS_WITH(exports::sha256_file((dir / "missing").string()), Contains("missing"));
}

TEST_CASE("base64 follows RFC 4648 and bits are packed lsb0", "[export]") {
  auto b = [](const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); };
  const std::vector<std::pair<std::string, std::string>> vectors = {
      {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, enc] : vectors) {
    CHECK(exports::base64_encode(b(plain)) == enc);
    CHECK(exports::base64_decode(enc) == b(plain));
  }
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  CHECK(exports::base64_decode(exports::base64_encode(all)) == all);
  CHECK_THROWS_WITH(exports::base64_decode("Zm9"), Contains("multiple of 4"));
  CHECK_THROWS_WITH(exports::base64_decode("Zm9*"), Contains("invalid base64 character"));
  CHECK_THROWS(exports::base64_decode("Z==="));
  CHECK_THROWS(exports::base64_decode("Zg==Zg=="));
  // Bit i is bit i%8 (least significant first) of byte i/8.
  CHECK(exports::pack_bits({1, 0, 0, 0, 0, 0, 0, 0, 0, 1}) == std::vector<uint8_t>{0x01, 0x02});
  CHECK(exports::pack_bits({0, 0, 0, 0, 0, 0, 0, 1}) == std::vector<uint8_t>{0x80});
}

TEST_CASE("the built-in cost table is configs/cost-delphi.json, and estimates follow it", "[export]") {
  const auto builtin = exports::default_cost_table();
  const auto shipped = exports::load_cost_table((fs::path(AUTOREP_SOURCE_DIR) / "configs" / "cost-delphi.json").string());
  CHECK(exports::to_json(builtin) == exports::to_json(shipped));
  CHECK(builtin.relu.offline_bytes == 17408.0);
  CHECK(builtin.relu.online_bytes == 1228.8);
  CHECK(!builtin.sources.empty());
  const auto e = exports::estimate_cost(builtin, 10, 5, 2);
  CHECK(e.multiplications == 5);
  CHECK(e.offline_bytes == 10 * 17408.0 + 5 * 128.0);
  CHECK(e.online_bytes == 10 * 1228.8 + 5 * 32.0);
  CHECK(exports::estimate_cost(builtin, 10, 5, 1).multiplications == 0);

  auto j = exports::to_json(builtin);
  j["relu"]["offline"] = 1;
  CHECK_THROWS_WITH(exports::cost_table_from_json(j, "t.json"), Contains("t.json: relu.offline: unknown key"));
  j = exports::to_json(builtin);
  j.erase("multiplication");
  CHECK_THROWS_WITH(exports::cost_table_from_json(j, "t.json"), Contains("multiplication: missing"));
  j = exports::to_json(builtin);
  j["relu"]["online_bytes"] = -1;
  CHECK_THROWS_WITH(exports::cost_table_from_json(j, "t.json"), Contains("relu.online_bytes"));
  j = exports::to_json(builtin);
  j["multiplications_per_poly_element"].erase("2");
  CHECK_THROWS_WITH(exports::estimate_cost(exports::cost_table_from_json(j), 1, 1, 2), Contains("degree 2"));
}

TEST_CASE("export -> file -> read round-trips masks and coefficients bit for bit", "[export]") {
  const std::string granularity = GENERATE(std::string("pixel"), std::string("channel"), std::string("layer"));
  const int64_t degree = GENERATE(int64_t{1}, int64_t{2});
  CAPTURE(granularity, degree);
  const auto spec = tiny_spec(8);
  auto net = gated_model(spec, granularity, degree);
  randomize_gates(*net, 7);
  const auto costs = exports::default_cost_table();
  const ExportJson doc = exports::build_export(net->sites(), tiny_info(spec), costs);
  require_schema_valid(doc);
  CHECK(doc["granularity"] == granularity);
  CHECK(doc["budget"]["kept"] == layers::kept_relus(net->sites()));
  CHECK(doc["budget"]["total"] == layers::total_relus(net->sites()));

  const auto dir = fresh_dir("roundtrip");
  const auto path = (dir / "sub" / "mask.json").string();
  exports::write_export(path, doc);
  for (const auto& entry : fs::directory_iterator(dir / "sub"))  // no temporary left behind
    CHECK(entry.path().filename() == "mask.json");
  const auto ex = exports::read_export(path);
  REQUIRE(ex.sites.size() == net->sites().size());
  CHECK(ex.degree == degree);
  bool saw_indices = false;
  for (size_t i = 0; i < ex.sites.size(); ++i) {
    const auto& s = ex.sites[i];
    auto g = std::dynamic_pointer_cast<layers::GateImpl>(net->sites()[i].module);
    const auto m = floats(g->mask().flatten());
    REQUIRE(s.mask.size() == m.size());
    for (size_t k = 0; k < m.size(); ++k) REQUIRE(s.mask[k] == (m[k] == 1.0f ? 1 : 0));
    CHECK(s.kept == g->kept_relus());
    saw_indices = saw_indices || doc["sites"][i].contains("kept_indices");
    const auto c0 = floats(g->c0()), c1 = floats(g->c1()), c2 = floats(g->c2());
    const float s1 = static_cast<float>(g->options().scale1()), s2 = static_cast<float>(g->options().scale2());
    REQUIRE(s.c0.size() == c0.size());
    for (size_t k = 0; k < c0.size(); ++k) {
      // The double read back is exactly a float: no rounding anywhere on the way.
      REQUIRE(static_cast<double>(static_cast<float>(s.c1[k])) == s.c1[k]);
      REQUIRE(same_bits(static_cast<float>(s.c0[k]), c0[k]));
      REQUIRE(same_bits(static_cast<float>(s.c1[k]), s1 * c1[k]));
      REQUIRE(same_bits(static_cast<float>(s.c2[k]), degree == 2 ? s2 * c2[k] : 0.0f));
    }
  }
  if (granularity != "layer") CHECK(saw_indices);

  // Applied to a differently initialised model, the export reproduces the same state exactly.
  auto other = gated_model(spec, granularity, degree);
  randomize_gates(*other, 99);
  exports::apply_export(ex, other->sites());
  for (size_t i = 0; i < ex.sites.size(); ++i) {
    auto a = std::dynamic_pointer_cast<layers::GateImpl>(net->sites()[i].module);
    auto b = std::dynamic_pointer_cast<layers::GateImpl>(other->sites()[i].module);
    CHECK(torch::equal(a->mask(), b->mask()));
  }
  const ExportJson again = exports::build_export(other->sites(), tiny_info(spec), costs);
  CHECK(again == doc);
  CHECK(exports::export_to_string(again) == read_text(path));
}

TEST_CASE("the golden export matches tests/data/golden-export.json", "[export]") {
  auto net = golden_model();
  const ExportJson doc = exports::build_export(net->sites(), tiny_info(tiny_spec(4)), exports::default_cost_table());
  require_schema_valid(doc);
  const fs::path golden = fs::path(AUTOREP_SOURCE_DIR) / "tests" / "data" / "golden-export.json";
  if (std::getenv("AUTOREP_UPDATE_GOLDEN")) exports::write_export(golden.string(), doc);
  const ExportJson expected = ExportJson::parse(read_text(golden));
  CHECK(nlohmann::json::parse(doc.dump()) == nlohmann::json::parse(expected.dump()));
  CHECK(exports::export_to_string(doc) == read_text(golden));

  // Independent of our encoder: pixels 0,3,6 | 9,12,15 | 18,21 kept -> bytes 0x49 0x92 0x24 = "SZIk".
  CHECK(expected["sites"][0]["mask"]["data"].get<std::string>().rfind("SZIk", 0) == 0);
  CHECK(expected["sites"][0]["decision"] == "mixed");
  CHECK(expected["sites"][0]["kept"] == 86);  // ceil(256/3) pixels
  CHECK(expected["sites"][1]["mask"]["data"] == "ggAAAA==");  // channels 1 and 7: 0b10000010
  CHECK(expected["sites"][1]["kept_indices"] == ExportJson::array({1, 7}));
  CHECK(expected["sites"][1]["kept"] == 2 * 2 * 2);
  CHECK(expected["sites"][2]["decision"] == "poly");
  CHECK(expected["sites"][2]["granularity"] == "layer");
  CHECK(expected["granularity"] == "mixed");
  CHECK(expected["sites"][0]["coefficients"]["c2"][0].get<double>() == static_cast<double>(0.1f * 1.0f));
  CHECK(expected["sites"][0]["coefficients"]["c0"][3].get<double>() == 0.125 * 3 - 1);
  const auto ex = exports::parse_export(expected, "golden");
  CHECK(ex.kept == 86 + 8);
  CHECK(ex.total == 256 + 128 + 64);
  const auto& cost = expected["cost"];
  CHECK(cost["before"]["relus"] == 448);
  CHECK(cost["after"]["relus"] == 94);
  CHECK(cost["after"]["multiplications"] == 448 - 94);
  CHECK(cost["reduction"]["total"].get<double>() > 4.0);
}

TEST_CASE("a plain-ReLU model exports as layer-level relu sites", "[export]") {
  const auto spec = tiny_spec(8);
  auto net = site_net(spec, layers::relu_factory());
  auto info = tiny_info(spec);
  info.method = "baseline";
  info.budget_target.reset();
  info.accuracy.reset();
  info.checkpoint_sha256.clear();
  const ExportJson doc = exports::build_export(net->sites(), info, exports::default_cost_table());
  require_schema_valid(doc);
  CHECK(doc["granularity"] == "layer");
  CHECK(doc["budget"]["target"].is_null());
  CHECK(doc["accuracy"]["test"].is_null());
  CHECK_FALSE(doc["accuracy"].contains("val"));
  CHECK(doc["model"]["checkpoint_sha256"].is_null());
  // With a validation split the export carries the validation accuracy beside the test one.
  info.accuracy = 0.91;
  info.val_accuracy = 0.93;
  ExportJson with_val = exports::build_export(net->sites(), info, exports::default_cost_table());
  require_schema_valid(with_val);
  CHECK(with_val["accuracy"]["val"].get<double>() == 0.93);
  CHECK_NOTHROW(exports::parse_export(with_val, "v.json"));
  with_val["accuracy"]["val"] = 1.5;
  CHECK_THROWS_WITH(exports::parse_export(with_val, "v.json"), Catch::Contains("accuracy.val"));
  CHECK(doc["cost"]["reduction"]["total"].get<double>() == 1.0);
  for (const auto& s : doc["sites"]) {
    CHECK(s["decision"] == "relu");
    CHECK(!s.contains("coefficients"));
    CHECK(s["mask"]["length"] == 1);
  }
  const auto ex = exports::parse_export(doc, "relu");
  CHECK(exports::check_against_model(ex, net->sites()).empty());
  exports::apply_export(ex, net->sites());
}

TEST_CASE("reading a broken export names the key path", "[export]") {
  auto net = golden_model();
  const ExportJson good = exports::build_export(net->sites(), tiny_info(tiny_spec(4)), exports::default_cost_table());
  REQUIRE_NOTHROW(exports::parse_export(good, "x.json"));
  auto broken = [&](const std::function<void(ExportJson&)>& edit) {
    ExportJson d = good;
    edit(d);
    return d;
  };
  auto parse = [](const ExportJson& d) { exports::parse_export(d, "x.json"); };

  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["version"] = 2; })),
                    Contains("x.json: version: this reader supports version 1, the file has version 2"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["format"] = "onnx"; })), Contains("x.json: format:"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d.erase("format"); })), Contains("format: missing"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][1]["mask"].erase("data"); })),
                    Contains("x.json: sites[1].mask.data: missing"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][0]["kept"] = "86"; })),
                    Contains("sites[0].kept: expected an integer"));
  // Sizes whose product overflows int64 are refused before any product is formed.
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) {
                      d["sites"][0]["shape"] = {int64_t{1} << 40, int64_t{1} << 40, 3};
                    })),
                    Contains("sites[0].shape: has more than 2^40 elements"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][0]["colour"] = "red"; })),
                    Contains("sites[0].colour: unknown key"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["model"].erase("arch"); })), Contains("model.arch: missing"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][0]["coefficients"]["c0"].erase(0); })),
                    Contains("sites[0].coefficients.c0: has 15 values, expected 16"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][0]["coefficients"]["c1"][2] = "x"; })),
                    Contains("sites[0].coefficients.c1[2]: expected a number"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][2].erase("coefficients"); })),
                    Contains("sites[2].coefficients: missing"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][0]["shape"] = {16, 4, 5}; })),
                    Contains("sites[0].total"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][1]["mask"]["shape"] = {32, 2, 2}; })),
                    Contains("sites[1].mask.shape"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][1]["mask"]["data"] = "ggAA"; })),
                    Contains("sites[1].mask.data: decodes to 3 bytes"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][1]["mask"]["data"] = "gg!AAA=="; })),
                    Contains("sites[1].mask.data: invalid base64"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][1]["kept_indices"] = {1, 6}; })),
                    Contains("sites[1].kept_indices[1]: 6 is not a set bit"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][1].erase("kept_indices"); })),
                    Contains("sites[1].kept_indices: missing"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][0]["decision"] = "relu"; })),
                    Contains("sites[0].decision"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["budget"]["kept"] = 95; })),
                    Contains("budget.kept: 95 but the sites keep 94"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["granularity"] = "pixel"; })), Contains("granularity"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["sites"][1]["name"] = "act1"; })),
                    Contains("sites[1].name: \"act1\" appears twice"));
  CHECK_THROWS_WITH(parse(broken([](ExportJson& d) { d["cost"]["table"]["relu"].erase("online_bytes"); })),
                    Contains("cost.table: relu.online_bytes: missing"));

  // What check D1 does: flip bit 0 of the first site's mask, nothing else.
  const ExportJson flipped = broken([](ExportJson& d) {
    auto bytes = exports::base64_decode(d["sites"][0]["mask"]["data"].get<std::string>());
    bytes[0] ^= 1;
    d["sites"][0]["mask"]["data"] = exports::base64_encode(bytes);
  });
  CHECK_THROWS_WITH(parse(flipped), Contains("x.json: sites[0].kept: 86 but the mask has 85 bits set"));
  // The same flip made self-consistent parses (and is caught against the model, below).
  ExportJson consistent = good;
  flip_consistently(consistent, 0, 0);
  CHECK_NOTHROW(parse(consistent));
  require_schema_valid(consistent);

  // Files: missing, empty, not JSON, truncated.
  const auto dir = fresh_dir("broken");
  CHECK_THROWS_WITH(exports::read_export((dir / "none.json").string()), Contains("none.json: cannot open"));
  write_text(dir / "empty.json", "");
  CHECK_THROWS_WITH(exports::read_export((dir / "empty.json").string()), Contains("empty.json: the file is empty"));
  write_text(dir / "junk.json", "{\"format\": autorep}");
  CHECK_THROWS_WITH(exports::read_export((dir / "junk.json").string()), Contains("junk.json: not valid JSON"));
  const std::string text = exports::export_to_string(good);
  write_text(dir / "half.json", text.substr(0, text.size() / 2));
  CHECK_THROWS_WITH(exports::read_export((dir / "half.json").string()), Contains("truncated"));
  write_text(dir / "v2.json", broken([](ExportJson& d) { d["version"] = 2; }).dump());
  CHECK_THROWS_AS(exports::read_export((dir / "v2.json").string()), exports::ExportError);
}

TEST_CASE("the schema validator rejects what the schema forbids", "[export]") {
  auto net = golden_model();
  const ExportJson good = exports::build_export(net->sites(), tiny_info(tiny_spec(4)), exports::default_cost_table());
  const test::SchemaValidator v(
      nlohmann::json::parse(read_text(fs::path(AUTOREP_SOURCE_DIR) / "docs" / "relu-mask.schema.json")));
  auto errors = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = nlohmann::json::parse(good.dump());
    edit(j);
    return v.validate(j);
  };
  CHECK(errors([](nlohmann::json&) {}).empty());
  CHECK(!errors([](nlohmann::json& j) { j.erase("sites"); }).empty());
  CHECK(!errors([](nlohmann::json& j) { j["version"] = 2; }).empty());
  CHECK(!errors([](nlohmann::json& j) { j["sites"][0]["kept"] = -1; }).empty());
  CHECK(!errors([](nlohmann::json& j) { j["sites"][0]["mask"]["bit_order"] = "msb0"; }).empty());
  CHECK(!errors([](nlohmann::json& j) { j["sites"][0]["extra"] = 1; }).empty());
  CHECK(!errors([](nlohmann::json& j) { j["sites"][0]["coefficients"]["c0"][0] = "1"; }).empty());
  CHECK(!errors([](nlohmann::json& j) { j["model"]["checkpoint_sha256"] = "abc"; }).empty());
  CHECK(!errors([](nlohmann::json& j) { j["cost"]["after"].erase("online_bytes"); }).empty());
  CHECK(errors([](nlohmann::json& j) { j["model"]["checkpoint_sha256"] = nullptr; }).empty());
}

TEST_CASE("an export that does not fit the model is rejected with reasons", "[export]") {
  auto net = golden_model();
  const auto ex = exports::parse_export(
      exports::build_export(net->sites(), tiny_info(tiny_spec(4)), exports::default_cost_table()), "golden");
  CHECK(exports::check_against_model(ex, net->sites()).empty());

  auto bigger = gated_model(tiny_spec(8), "pixel", 2);
  auto why = exports::check_against_model(ex, bigger->sites());
  REQUIRE(!why.empty());
  CHECK_THAT(why[0], Contains("act1") && Contains("shape [16,4,4] in the export, [16,8,8] in the model"));
  CHECK_THROWS_WITH(exports::apply_export(ex, bigger->sites()), Contains("does not fit the model"));

  auto all_pixel = gated_model(tiny_spec(4), "pixel", 2);
  why = exports::check_against_model(ex, all_pixel->sites());
  REQUIRE(why.size() == 2);
  CHECK_THAT(why[0], Contains("act2") && Contains("granularity channel in the export, pixel in the model"));

  auto relus = site_net(tiny_spec(4), layers::relu_factory());
  why = exports::check_against_model(ex, relus->sites());
  REQUIRE(!why.empty());
  CHECK_THAT(why[0], Contains("plain ReLU"));
}

