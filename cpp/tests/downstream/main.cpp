// my_service.cpp: segment one photo with an artifact folder from `python -m export`.
#include <carseg/image_io.h>
#include <carseg/predictor.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: my_service ARTIFACTS PHOTO\n";
    return 2;
  }
  try {
    carseg::PredictorOptions options;  // the CPU, precision auto
    if (carseg::cuda_available()) {    // a GPU: fp16, channels_last, CUDA graphs
      options.device = "cuda";
      options.precision = carseg::Precision::kFp16;
    }
    const carseg::Predictor predictor(argv[1], options);
    carseg::Image img = carseg::read_image(argv[2]);  // RGB from JPEG, PNG, GIF or BMP
    const torch::Tensor mask = predictor.predict(
        torch::from_blob(img.pixels.data(), {img.height, img.width, 3}, torch::kUInt8));
    // uint8 [H, W] in {0, 1}, at the photo's size, on the CPU
    std::cout << "car: " << mask.to(torch::kFloat32).mean().item<float>() * 100 << "% of "
              << img.width << "x" << img.height << " on " << predictor.device() << "\n";
    return 0;
  } catch (const carseg::Error& e) {  // a bad photo, model folder or option: file and reason
    std::cerr << "my_service: error: " << e.what() << "\n";
    return 1;
  }
}
