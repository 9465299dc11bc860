// work in progress: replaced within this session
#include "graph/loader.hpp"
#include "core/error.hpp"
namespace smp::graph {
Graph load_graph(const std::filesystem::path& path, const LoadOptions&) { throw_failure(path.string(), "loader not implemented yet"); }
}
