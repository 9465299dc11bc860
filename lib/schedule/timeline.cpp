#include "schedule/timeline.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace smp::schedule {

std::string_view span_kind_name(SpanKind k) {
  switch (k) {
    case SpanKind::Forward: return "forward (F)";
    case SpanKind::BackwardInput: return "backward, inputs (B)";
    case SpanKind::BackwardWeight: return "backward, weights (W)";
    case SpanKind::Backward: return "full backward (B+W)";
    case SpanKind::SendAct: return "send activations";
    case SpanKind::SendGrad: return "send gradients";
    case SpanKind::AllReduce: return "all-reduce";
    case SpanKind::Update: return "optimizer step";
    case SpanKind::Other: return "other";
  }
  return "other";
}

Timeline make_timeline(const Schedule& s, const SimResult& r, std::string title, std::string unit,
                       double seconds_per_unit) {
  Timeline t;
  t.title = std::move(title);
  t.unit = std::move(unit);
  t.seconds_per_unit = seconds_per_unit;
  for (int i = 0; i < s.ranks; ++i) t.rows.push_back(fmt::format("rank {}", i));
  // Chunk of each stage on its rank: its position among the rank's stages.
  std::vector<int> chunk(static_cast<size_t>(s.stages()), 0);
  {
    std::vector<int> seen(static_cast<size_t>(s.ranks), 0);
    for (int st = 0; st < s.stages(); ++st) chunk[static_cast<size_t>(st)] = seen[static_cast<size_t>(s.rank_of(st))]++;
  }
  t.spans.reserve(r.events.size());
  for (const Event& e : r.events) {
    Span sp;
    sp.row = e.rank;
    sp.start = e.start_s;
    sp.end = e.end_s;
    if (e.kind == EventKind::AllReduce) {
      sp.kind = SpanKind::AllReduce;
      sp.label = "all-reduce";
      sp.name = "all-reduce";
    } else if (e.kind == EventKind::Update) {
      sp.kind = SpanKind::Update;
      sp.label = "opt";
      sp.name = "optimizer step";
    } else {
      sp.label = fmt::format("{}", e.action.mb);
      sp.name = to_string(e.action);
      sp.shade = chunk[static_cast<size_t>(e.action.stage)];
      switch (e.action.op) {
        case Op::Forward: sp.kind = SpanKind::Forward; break;
        case Op::BackwardInput: sp.kind = SpanKind::BackwardInput; break;
        case Op::BackwardWeight: sp.kind = SpanKind::BackwardWeight; break;
        case Op::Backward: sp.kind = SpanKind::Backward; break;
        case Op::SendAct: sp.kind = SpanKind::SendAct; sp.lane = 1; break;
        case Op::SendGrad: sp.kind = SpanKind::SendGrad; sp.lane = 1; break;
        default: sp.kind = SpanKind::Other; break;
      }
    }
    t.spans.push_back(std::move(sp));
  }
  return t;
}

namespace {

struct Rgb {
  int r, g, b;
};

Rgb base_colour(SpanKind k) {
  switch (k) {
    case SpanKind::Forward: return {59, 111, 182};        // blue
    case SpanKind::BackwardInput: return {32, 150, 136};  // teal
    case SpanKind::BackwardWeight: return {236, 163, 55}; // amber
    case SpanKind::Backward: return {76, 154, 58};        // green
    case SpanKind::SendAct: return {148, 103, 189};       // purple
    case SpanKind::SendGrad: return {196, 78, 150};       // magenta
    case SpanKind::AllReduce: return {204, 55, 51};       // red
    case SpanKind::Update: return {140, 86, 75};          // brown
    case SpanKind::Other: return {127, 127, 127};
  }
  return {127, 127, 127};
}

Rgb shaded(SpanKind k, int shade) {
  Rgb c = base_colour(k);
  // Chunk 0 as is, later chunks darker.
  double f = 1.0 - 0.3 * std::min(shade, 2);
  return {static_cast<int>(c.r * f), static_cast<int>(c.g * f), static_cast<int>(c.b * f)};
}

std::string hex(Rgb c) { return fmt::format("#{:02x}{:02x}{:02x}", c.r, c.g, c.b); }

bool dark(Rgb c) { return 0.299 * c.r + 0.587 * c.g + 0.114 * c.b < 150; }

std::string esc(std::string_view s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += ch;
    }
  }
  return o;
}

// A 1-2-5 step giving about `target` ticks over [0, span].
double nice_step(double span, int target) {
  if (span <= 0) return 1;
  double raw = span / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double f : {1.0, 2.0, 5.0, 10.0})
    if (raw <= f * mag) return f * mag;
  return 10 * mag;
}

// Axis scale: seconds shown in s, ms or us; other units as they are.
struct AxisUnit {
  double factor = 1;
  std::string name;
};
AxisUnit axis_unit(const Timeline& t, double t_max) {
  if (t.unit != "s") return {1, t.unit};
  if (t_max < 1e-3) return {1e6, "\xc2\xb5s"};
  if (t_max < 1) return {1e3, "ms"};
  return {1, "s"};
}

std::string fmt_num(double v) {
  std::string s = fmt::format("{:.6g}", v);
  return s;
}

}  // namespace

std::string to_svg(const Timeline& t, const SvgOptions& opt) {
  double t_end = 0;  // the timeline's own end; the axis may run further
  for (const auto& sp : t.spans) t_end = std::max(t_end, sp.end);
  double t_max = std::max(t_end, opt.time_max);
  if (t_max <= 0) t_max = 1;
  const double left = 78, right = 24, top = t.title.empty() ? 16 : 44;
  const double W = opt.width_px, rh = opt.row_height_px;
  const double bar_h = std::round(rh * 0.62), comm_h = std::round(rh * 0.16);
  const size_t rows = std::max<size_t>(t.rows.size(), 1);
  const double chart_h = rh * static_cast<double>(rows);
  const double x_scale = W / t_max;
  const double font = std::clamp(bar_h * 0.55, 8.0, 13.0);

  // Which kinds appear, in legend order.
  std::array<bool, static_cast<size_t>(SpanKind::Other) + 1> present{};
  bool any_comm = false;
  for (const auto& sp : t.spans) {
    present[static_cast<size_t>(sp.kind)] = true;
    any_comm = any_comm || sp.lane == 1;
  }
  int max_shade = 0;
  for (const auto& sp : t.spans) max_shade = std::max(max_shade, sp.shade);

  const double axis_y = top + chart_h;
  const double legend_y = axis_y + 62;
  const double footer_y = legend_y + 28;
  const double H = footer_y + (t.footer.empty() ? 0 : 18) + 6;
  const double total_w = left + W + right;

  std::string o;
  o.reserve(256 + t.spans.size() * 160);
  o += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" viewBox=\"0 0 {:.0f} {:.0f}\" "
      "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n",
      total_w, H, total_w, H);
  o += fmt::format("<rect x=\"0\" y=\"0\" width=\"{:.0f}\" height=\"{:.0f}\" fill=\"#ffffff\"/>\n", total_w, H);
  if (!t.title.empty())
    o += fmt::format("<text x=\"{:.1f}\" y=\"26\" font-size=\"16\" font-weight=\"bold\" fill=\"#222\">{}</text>\n", left,
                     esc(t.title));

  // Rows: an idle background, the row name.
  for (size_t i = 0; i < rows; ++i) {
    double y = top + rh * static_cast<double>(i);
    o += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#eeeeee\"/>\n", left,
                     y + 2, t_end * x_scale, bar_h + (any_comm ? comm_h + 2 : 0));
    std::string name = i < t.rows.size() ? t.rows[i] : "";
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"13\" text-anchor=\"end\" fill=\"#222\">{}</text>\n",
                     left - 8, y + 2 + bar_h / 2 + 4.5, esc(name));
  }

  // Axis and grid lines.
  AxisUnit au = axis_unit(t, t_max);
  double step = nice_step(t_max * au.factor, 12) / au.factor;
  o += "<g stroke=\"#bbbbbb\" stroke-width=\"0.6\">\n";
  for (double v = 0; v <= t_max * (1 + 1e-9); v += step) {
    double x = left + v * x_scale;
    o += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", x, top, x, axis_y + 5);
  }
  o += "</g>\n";
  o += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#444\" stroke-width=\"1\"/>\n",
                   left, axis_y, left + W, axis_y);
  o += "<g font-size=\"11\" fill=\"#333\" text-anchor=\"middle\">\n";
  for (double v = 0; v <= t_max * (1 + 1e-9); v += step)
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n", left + v * x_scale, axis_y + 18,
                     fmt_num(std::round(v * au.factor * 1e6) / 1e6));
  o += "</g>\n";
  o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" fill=\"#333\" text-anchor=\"middle\">time ({})</text>\n",
                   left + W / 2, axis_y + 34, esc(au.name));

  // Spans.
  o += fmt::format("<g font-size=\"{:.1f}\" text-anchor=\"middle\">\n", font);
  for (const auto& sp : t.spans) {
    if (sp.row < 0 || static_cast<size_t>(sp.row) >= rows) continue;
    double y = top + rh * sp.row + 2;
    double h = bar_h;
    if (sp.lane == 1) {
      y += bar_h + 2;
      h = comm_h;
    }
    double x = left + sp.start * x_scale;
    double w = std::max((sp.end - sp.start) * x_scale, 0.5);
    Rgb c = shaded(sp.kind, sp.shade);
    o += fmt::format("<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.1f}\" fill=\"{}\" stroke=\"#ffffff\" "
                     "stroke-width=\"{}\"><title>{} [{} .. {}]</title></rect>\n",
                     x, y, w, h, hex(c), sp.lane == 1 ? "0.4" : "0.8", esc(sp.name), fmt_num(sp.start), fmt_num(sp.end));
    if (sp.lane == 0 && !sp.label.empty() && w >= font * 0.62 * static_cast<double>(sp.label.size()) + 3)
      o += fmt::format("<text x=\"{:.2f}\" y=\"{:.1f}\" fill=\"{}\">{}</text>\n", x + w / 2, y + h / 2 + font * 0.36,
                       dark(c) ? "#ffffff" : "#111111", esc(sp.label));
  }
  o += "</g>\n";

  // Legend: the kinds present, chunk shades, idle.
  double lx = left;
  auto swatch = [&](Rgb c, const std::string& text) {
    o += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"14\" height=\"14\" fill=\"{}\"/>\n", lx, legend_y - 11, hex(c));
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" fill=\"#222\">{}</text>\n", lx + 19, legend_y,
                     esc(text));
    lx += 19 + 7.0 * static_cast<double>(text.size()) + 18;
  };
  for (size_t k = 0; k < present.size(); ++k)
    if (present[k]) swatch(base_colour(static_cast<SpanKind>(k)), std::string(span_kind_name(static_cast<SpanKind>(k))));
  if (max_shade > 0) swatch(shaded(SpanKind::Forward, 1), "darker: later chunk");
  swatch({238, 238, 238}, "idle");
  o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\" fill=\"#555\">numbers: microbatch</text>\n", lx,
                   legend_y);
  if (!t.footer.empty())
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" fill=\"#333\">{}</text>\n", left, footer_y,
                     esc(t.footer));
  o += "</svg>\n";
  return o;
}

nlohmann::json to_chrome_trace(const Timeline& t) {
  using nlohmann::json;
  json ev = json::array();
  const double us = t.seconds_per_unit * 1e6;
  ev.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 0}, {"args", {{"name", t.title.empty() ? "smp" : t.title}}}});
  std::vector<std::array<bool, 2>> used(t.rows.size(), {false, false});
  for (const auto& sp : t.spans)
    if (sp.row >= 0 && static_cast<size_t>(sp.row) < used.size()) used[static_cast<size_t>(sp.row)][sp.lane ? 1 : 0] = true;
  for (size_t r = 0; r < t.rows.size(); ++r)
    for (int lane = 0; lane < 2; ++lane) {
      if (!used[r][static_cast<size_t>(lane)] && lane == 1) continue;
      int tid = static_cast<int>(r) * 2 + lane;
      ev.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 0}, {"tid", tid},
                    {"args", {{"name", lane ? t.rows[r] + " comm" : t.rows[r]}}}});
      ev.push_back({{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", 0}, {"tid", tid}, {"args", {{"sort_index", tid}}}});
    }
  for (const auto& sp : t.spans) {
    json e = {{"name", sp.name.empty() ? sp.label : sp.name},
              {"cat", std::string(span_kind_name(sp.kind))},
              {"ph", "X"},
              {"pid", 0},
              {"tid", sp.row * 2 + (sp.lane ? 1 : 0)},
              {"ts", sp.start * us},
              {"dur", (sp.end - sp.start) * us}};
    e["args"] = {{"label", sp.label}, {"start", sp.start}, {"end", sp.end}, {"unit", t.unit}};
    if (sp.shade) e["args"]["chunk"] = sp.shade;
    ev.push_back(std::move(e));
  }
  return json{{"traceEvents", std::move(ev)}, {"displayTimeUnit", "ms"}};
}

void write_svg(const std::filesystem::path& path, const Timeline& t, const SvgOptions& opt) {
  write_file_atomic(path, to_svg(t, opt));
}

void write_chrome_trace(const std::filesystem::path& path, const Timeline& t) {
  write_file_atomic(path, to_chrome_trace(t).dump() + "\n");
}

}  // namespace smp::schedule
