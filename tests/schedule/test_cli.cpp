// smp-plan's schedule mode: --show, --schedule-file, --timeline, --trace, bad input.
#include <doctest/doctest.h>

#include "core/io.hpp"
#include "schedule/generators.hpp"
#include "schedule/schedule.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

using namespace smp::schedule;
namespace fs = std::filesystem;

namespace {

struct Run {
  int status = -1;
  std::string out;  // stdout and stderr together
};

Run run(const std::string& args) {
  std::string cmd = std::string(SMP_BIN_DIR) + "/smp-plan " + args + " 2>&1";
  Run r;
  FILE* f = ::popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(f);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("smp_sched_cli_" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace

TEST_CASE("--show prints the grid and the simulated bubble with unit costs") {
  Run r = run("--schedule 1f1b --stages 4 --microbatches 8 --show");
  CAPTURE(r.out);
  CHECK(r.status == 0);
  CHECK(has(r.out, "rank 0 0F0 0F1 0F2 0F3 0X0 0F4"));
  CHECK(has(r.out, "rank 3 3F0 3X0 3F1 3X1"));
  CHECK(has(r.out, "step time 33, ideal 24, bubble 27.3% (idle / compute 0.375)"));
  Run z = run("--schedule zb-h1 --stages 4 --microbatches 8 --show");
  CHECK(has(z.out, "step time 27"));
  Run l = run("--schedule interleaved --stages 2 --microbatches 4 --show --lowered");
  CHECK(l.status == 0);
  CHECK(has(l.out, "0SF0>1"));
  CHECK(has(l.out, "2 chunks per rank"));
}

TEST_CASE("bad options are one-line errors with exit status 2") {
  for (const char* args : {"--schedule pipedream --show", "--schedule interleaved --stages 4 --microbatches 6 --show",
                           "--schedule 1f1b --chunks 2 --show", "--stages 0 --show"}) {
    Run r = run(args);
    CAPTURE(args);
    CAPTURE(r.out);
    CHECK(r.status == 2);
    CHECK(r.out.starts_with("error: "));
    CHECK(r.out.find('\n') == r.out.size() - 1);
  }
}

TEST_CASE("a saved schedule validates, a hand-broken one is shown with the action marked") {
  TempDir dir;
  Run w = run("--schedule zb-h1 --stages 3 --microbatches 4 --save-schedule " + (dir / "zb.json"));
  REQUIRE(w.status == 0);
  Run ok = run("--schedule-file " + (dir / "zb.json"));
  CAPTURE(ok.out);
  CHECK(ok.status == 0);
  CHECK(has(ok.out, "zb.json: valid"));
  // Hand edit: drop 1W2 from rank 1.
  Schedule s = read_schedule(dir / "zb.json");
  auto& row = s.actions[1];
  row.erase(std::find(row.begin(), row.end(), parse_action("1W2")));
  write_schedule(dir / "broken.json", s);
  Run bad = run("--schedule-file " + (dir / "broken.json") + " --show");
  CAPTURE(bad.out);
  CHECK(bad.status == 2);
  CHECK(has(bad.out, "[1B2]"));
  CHECK(has(bad.out, "^^^^^"));
  CHECK(has(bad.out, "error: " + (dir / "broken.json") + ": rank 1, step "));
  CHECK(has(bad.out, "(1B2): has no weight backward 1W2"));
  // The file's sizes cannot be overridden.
  CHECK(run("--schedule-file " + (dir / "zb.json") + " --stages 3").status == 2);
  // A lowered file validates too.
  REQUIRE(run("--schedule 1f1b --stages 3 --microbatches 4 --lowered --save-schedule " + (dir / "low.json")).status == 0);
  CHECK(read_schedule(dir / "low.json").lowered());
  CHECK(run("--schedule-file " + (dir / "low.json") + " --show").status == 0);
}

TEST_CASE("--timeline and --trace write the picture and the trace") {
  TempDir dir;
  Run r = run("--schedule interleaved --stages 4 --microbatches 8 --timeline " + (dir / "t.svg") + " --trace " +
              (dir / "t.json"));
  CAPTURE(r.out);
  REQUIRE(r.status == 0);
  std::string svg = smp::read_file(dir / "t.svg");
  CHECK(svg.starts_with("<svg"));
  CHECK(has(svg, "interleaved: 4 ranks, 2 chunks per rank, 8 microbatches"));
  nlohmann::json j = smp::read_json(dir / "t.json");
  CHECK(j["traceEvents"].size() > 4 * 2 * 8 * 2);
}

TEST_CASE("saved schedules satisfy schemas/schedule.schema.json") {
  TempDir dir;
  REQUIRE(run("--schedule interleaved --stages 2 --microbatches 4 --lowered --save-schedule " + (dir / "s.json")).status == 0);
  std::string py = std::string(SMP_PYTHON) +
                   " -c \"import json,sys,jsonschema; jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))"
                   ".validate(json.load(open(sys.argv[2])))\" " +
                   std::string(SMP_SOURCE_DIR) + "/schemas/schedule.schema.json ";
  if (std::system((std::string(SMP_PYTHON) + " -c 'import jsonschema' 2>/dev/null").c_str()) != 0) {
    WARN_MESSAGE(false, "python3-jsonschema is not installed: schema check skipped");
    return;
  }
  CHECK(std::system((py + (dir / "s.json")).c_str()) == 0);
  // And the schema rejects a malformed action.
  std::ofstream(dir / "bad.json") << R"({"version": 1, "ranks": 1, "microbatches": 1, "actions": [["0F0", "0Q0"]]})";
  CHECK(std::system((py + (dir / "bad.json") + " 2>/dev/null").c_str()) != 0);
}
